"""The API's own pages work offline."""

from __future__ import annotations

import re
from typing import Any


def test_docs_pages_load_their_assets_from_this_server(client: Any) -> None:
    # The API docs must work with no internet access: no asset comes from a CDN.
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css|png))"', html)
        assert assets, page
        for asset in assets:
            assert asset.startswith("/"), (page, asset)
            assert client.get(asset).status_code == 200, asset
