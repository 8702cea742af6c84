"""User-facing programs over ``gan`` and ``weights``: the Gradio comparison app and the batch sampler."""
