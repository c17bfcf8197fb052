"""Names the params schema shares with the code that acts on them, in a module that imports nothing.

``steve1.params`` validates these values and ``steve1.layout`` / ``steve1.data.formats`` act on
them; keeping them here lets both sides import them without importing each other (the schema
sits below the layout and the formats in the import layers, see tests/test_import_layers.py).
"""

from __future__ import annotations

from typing import Literal

# sample.mix name of the generate stage's episodes (a custom set may not take it)
GENERATED_SET = "generated"

# decode.frame_codec: lossless HDF5 filters, or "jpeg": one JPEG per frame (lossy); each codec's
# storage is declared in steve1.data.formats
FrameCodec = Literal["none", "lzf", "gzip", "blosc-lz4", "blosc-zstd", "jpeg"]
