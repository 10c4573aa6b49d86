"""Serving a registered LiVO version: the KServe predictor (`server`), its request schema, micro-batching queue and
page. Importing the package imports nothing."""
