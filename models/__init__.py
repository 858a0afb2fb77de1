"""Model definitions built from xpnn layers (``xpnn.models``).

- :func:`mnist_mlp`, :func:`mnist_cnn`: networks for 28x28 digits, with weights trained
  here (:mod:`xpnn.models.mnist`);
- :func:`darknet53` and :class:`Darknet53`: the ImageNet classifier of YOLOv3 with timm's
  parameter names (:mod:`xpnn.models.darknet`); ``python -m xpnn.models.convert_darknet``
  converts darknet's own weights (:mod:`xpnn.models.convert_darknet`);
- :mod:`xpnn.models.preprocess`: image files to Darknet53's input, and
  :mod:`xpnn.models.imagenet`: the names of its 1000 classes.

Every model is saved with :func:`xpnn.io.save` and rebuilt with :func:`xpnn.io.load_model`.
"""

from xpnn.models.darknet import Darknet53, darknet53
from xpnn.models.mnist import mnist_cnn, mnist_mlp

__all__ = ["Darknet53", "darknet53", "mnist_cnn", "mnist_mlp"]
