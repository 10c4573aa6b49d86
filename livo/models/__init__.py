"""Model weights in the object store, for clusters without a model hub.

`livo.models.mirror` copies a diffusers pipeline or a transformers model (a local folder or a hub id) into the object
store with a `livo-mirror.json` manifest written last, verifies mirrors, and fetches them into a verified local cache
keyed by content. `livo models mirror|verify|fetch|show|ls` is its command line.
"""
