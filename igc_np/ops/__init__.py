"""The differentiable ops, one family per file; `igc_np.functional` is their public face."""
