"""Reference implementations (diffusers, transformers, open_clip) and the golden fixtures the crate's tests compare against."""
