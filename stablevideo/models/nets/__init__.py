"""The pipeline's networks as plain torch modules: SD 1.5's UNet, ControlNet and VAE, CLIP's text tower
and MiDaS' DPT-hybrid, with the parameter names of diffusers / transformers and built from their
``config.json`` files, so their checkpoints load unchanged.

Why not the diffusers / transformers classes themselves: importing them costs a cold edit 10-16 s on
the H200 host (``torch._dynamo``, diffusers' loaders and every model family's package are imported on
the way; benchmarks/results/cold-start-*), while these modules import torch only. The libraries stay
the reference: tests/test_nets_*.py load each reference model's weights into these modules and compare
outputs.
"""
