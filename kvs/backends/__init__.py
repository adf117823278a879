"""kvs backends: one module per backend family, each a dogpile.cache plugin.

The core never imports these modules by name; it asks dogpile's plugin
registry (entry points in the ``dogpile.cache`` group) for ``kvs.memory``,
``kvs.sqlite``, ``kvs.redis``... and checks whether the class it gets keeps
the lease contract of :mod:`kvs.backends.base`.
"""
