"""What an /allocate body may hold, shared by its decoders (`service.payload`, `service.rows`, `service.columnar`)."""

from __future__ import annotations

import re

CAMPAIGN_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_ID_LENGTH = 256  # characters of a string id
INT_RANGE = (-(2**63), 2**64 - 1)  # integer ids orjson decodes (and encodes) as integers; beyond: floats
