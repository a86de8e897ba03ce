"""`python -m msv_contract`: print the capability table (the one in docs/optimization.md)."""

from msv_contract.capabilities import markdown_table

print(markdown_table(), end="")
