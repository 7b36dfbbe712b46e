"""Labels that standard tools read, written into every generated image.

`parameters` (the A1111 "parameters" text that "PNG info" tools show), `xmp` (the IPTC digital source type
in XMP, read by exiftool and image hosts), `c2pa` (signed content credentials) and `write` (one image file
with all of them, from one metadata dict). The metadata's keys are described in `schema` (the keys
`a1111_parameters` reads are named in its docstring).
"""
