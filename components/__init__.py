"""KFP components of the livo pipeline: one component per file, each a thin wrapper over `livo.*`.

Importing a component module has no side effect beyond defining the component: kfp is imported, livo's heavy
modules are imported inside the component functions (they run in the image, where livo is installed). Every
component's base image is `components._image.LIVO_IMAGE`. Component modules must not use
`from __future__ import annotations`: kfp builds the interface from the real annotation objects.
"""
