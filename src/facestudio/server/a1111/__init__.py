"""An AUTOMATIC1111-compatible API (`facestudio serve --a1111`), so clients written for A1111 drive facestudio.

```
names.py      A1111's names: samplers and schedule types, ControlNet IP-Adapter modules and models
schemas.py    request and answer bodies (the OpenAPI schema of /sdapi)
units.py      ControlNet IP-Adapter units -> photos, weights, region masks (upload checks on every image)
mapping.py    a txt2img request -> a synchronous job (`generation.InlinePlan`), honoured and ignored fields
responses.py  the answers: base64 PNGs with parameters and info, progress, A1111's error shape
routes.py     the routes, on the app's queue, limits and token
```
"""

from .routes import add_routes

__all__ = ["add_routes"]
