"""Models: the VPT/STEVE-1 policy, MineCLIP and the prior, weight-compatible with the official files.

Import the submodules themselves (``steve1.models.vpt``, ``steve1.models.mineclip``): this package
loads none of them, so a stage that needs MineCLIP does not depend on the policy's code (and
``dvc.yaml``'s derived code deps do not rerun the embed stage for a policy change).
"""
