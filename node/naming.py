"""Naming rules shared by configuration and the API: ids and host names."""

from __future__ import annotations

import re

# ("." and ".." are no ids: a coordinator's data folder is named by its id, and COORDINATOR_ID=".." put it in the
# working directory: a reviewer's find)
ID_RE = re.compile(r"^(?!\.\.?$)[A-Za-z0-9._:-]{1,128}$")
# a host name as resolvers take it: labels of 1-63 letters, digits, hyphens or underscores (container and service
# names have them), dots between, one trailing dot allowed (a fully qualified name)
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?$")
