"""Local deployment helpers: cluster launcher, DA devnet, blob-store service (later issues)."""
