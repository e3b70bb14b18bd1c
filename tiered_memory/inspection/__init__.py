"""Looking inside a store from the outside: ``tiered-memory stats|namespaces|ls|get|search|export|import|verify``.

- :mod:`.snapshot`: a read-only view of a store's cold tier as stored (sealed values stay sealed
  without the key), for commands that must see every byte: get, namespaces, export, verify.
- :mod:`.transfer`: export to JSON Lines and import into a new directory, an exact copy.
- :mod:`.verify`: the store's invariants, checked without changing anything.
- :mod:`.cli`: the subcommands (``add_inspect_parsers``), tables, ``--json``, exit codes.
"""
