"""The procedural scenes the default model is trained and evaluated on."""
