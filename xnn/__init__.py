"""xnn: a small, fast, honest neural-network framework on NumPy or CuPy.

    import xnn
    dev = xnn.device("auto")           # "cpu" | "gpu" | "auto"
    net = xnn.Sequential([...], device=dev)
"""
from . import layers, models, optim
from .backends import Device, device, device_of, to_numpy
from .data_parallel import DataParallel
from .errors import DeviceMismatchError, XnnError
from .model import Residual, Sequential

__version__ = "0.1.0"

__all__ = ["device", "device_of", "to_numpy", "Device", "layers", "models", "optim", "Sequential", "Residual",
           "DataParallel", "XnnError", "DeviceMismatchError", "__version__"]
