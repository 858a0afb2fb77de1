"""Model definitions built from xpnn layers (``xpnn.models``)."""
