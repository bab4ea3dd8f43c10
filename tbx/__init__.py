"""tbx — computer-aided tuberculosis diagnosis on chest X-rays (TBX11K + SymFormer)."""

__version__ = "0.1.0"
