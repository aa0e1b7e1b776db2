"""fastcomposer-web's Python tools, one package (`fctools`, installed from tools/ with
`pip install -e tools`): the reference implementations and golden fixtures (`reference`), the
procedural dataset (`dataset`), training of the default model (`train`), its evaluation (`eval`)
and the PyTorch side of the benchmarks (`bench`); `bundle_io` reads our GGUF bundles. Never needed
by the crate, the web package or CI."""
