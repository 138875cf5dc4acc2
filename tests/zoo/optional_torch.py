"""PyTorch and the tests' PyTorch models, or `None` where PyTorch is not installed.

The test modules that compare with PyTorch import them from here and carry the `torch`
marker: CI's oldest stack has no PyTorch and deselects them with `-m "not torch"`, which
still imports the modules (tests/conftest.py fails a selected one where PyTorch is missing).
"""

try:
    import torch

    from tests.zoo import ab_torch_models, torch_models
except ModuleNotFoundError as error:
    if error.name != "torch":
        raise
    torch = ab_torch_models = torch_models = None

__all__ = ["ab_torch_models", "torch", "torch_models"]
