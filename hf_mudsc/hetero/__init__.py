"""Parents of different depths (:mod:`.depth`, layer alignment by :mod:`.cka`) and widths
(:mod:`.width`), merged through the same engine (DESIGN §4)."""
