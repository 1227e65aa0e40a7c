"""Training the codecs and second-stage decoders: LightningModules that wrap the inference classes, their data and
their shared losses, codebook tools and metrics. ``anygpt fit --config configs/codecs/X.yaml`` runs them."""
