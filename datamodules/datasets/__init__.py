"""Dataset readers and cache builders (torchgeo's ``datasets/``): file formats, integration, caches.

The DataModules in ``datamodules/`` are thin: they choose settings, call these, and build loaders.
"""
