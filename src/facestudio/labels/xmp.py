"""The XMP packet every generated image carries: IPTC's digital source type, read by exiftool, image hosts and
photo managers (`Iptc4xmpExt:DigitalSourceType`, IPTC Photo Metadata Standard 2023.1), and the tool that made it.

PNG holds it in an iTXt chunk named `XML:com.adobe.xmp` (XMP specification part 3, section 1.1.5); JPEG and
WebP in their own XMP places (Pillow's `xmp=`).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

#: IPTC NewsCodes digital source type of an image made by a generative model trained on sampled content.
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: The PNG text chunk keyword XMP readers look for.
PNG_XMP_KEY = "XML:com.adobe.xmp"


def xmp_packet(software: str, created: str | None = None,
               source_type: str = TRAINED_ALGORITHMIC_MEDIA) -> str:
    """An XMP packet saying the image is `source_type` made by `software` (at `created`, ISO 8601, if given)."""
    created_attr = "" if created is None else f"\n    xmp:CreateDate={quoteattr(created)}"
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    Iptc4xmpExt:DigitalSourceType={quoteattr(source_type)}
    xmp:CreatorTool={quoteattr(software)}{created_attr}/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>"""
