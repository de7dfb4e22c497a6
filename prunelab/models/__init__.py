"""Models for pruning research: one registry, plain ``nn.Module`` results, seeded initializers.

```python
model = prunelab.models.create("resnet20", num_classes=10, input_shape=(3, 32, 32), seed=0)
prunelab.models.initialize(model, **model.prunelab_init, seed=1)   # re-draw (reinit ablation)
```

Layers are standard ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d``, so masks keyed by parameter
name (``prunelab.Mask``) apply without custom layer classes.
"""

from prunelab.models.factory import create
from prunelab.models.initializers import INITIALIZERS, fans, initialize
from prunelab.models.registry import MODELS, names, register
from prunelab.models.resnet_cifar import WIDE_RESNET_PATTERN, CifarResNet
from prunelab.models.vgg import CifarVGG

__all__ = [
    "INITIALIZERS",
    "MODELS",
    "WIDE_RESNET_PATTERN",
    "CifarResNet",
    "CifarVGG",
    "create",
    "fans",
    "initialize",
    "names",
    "register",
]
