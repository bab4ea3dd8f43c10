"""Deployment: ``tbx screen`` (a model over any folder of CXRs, :mod:`tbx.deploy.screen`),
``tbx export`` (ONNX, :mod:`tbx.deploy.export`), the two inference backends sharing one pipeline
(:mod:`tbx.deploy.backends`, :mod:`tbx.deploy.inputs`) and the operating points picked on a
validation set (:mod:`tbx.deploy.operating_points`)."""
