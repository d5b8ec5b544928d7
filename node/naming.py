"""Naming rules shared by configuration and the API: ids and host names."""

from __future__ import annotations

import re

ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
