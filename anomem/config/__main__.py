"""``python -m anomem.config --choices-table``: print the table of choices of ``docs/design.md``."""

import sys

from anomem.config.recipes import choices_table

if sys.argv[1:] != ["--choices-table"]:
    sys.exit("usage: python -m anomem.config --choices-table")
print(choices_table())
