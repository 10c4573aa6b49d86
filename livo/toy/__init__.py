"""The toy world: a synthetic Stable-Diffusion-architecture setting in which LiVO can be shown to work on a laptop
(renderer, caption grammar, exact judges, the base-model builder/trainer and its committed weights)."""
