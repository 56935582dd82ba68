"""The conversion's entry point under the seed workflow's name: `python scripts/COVID_19_20.py <download>`.

The same command as `make convert` / `python -m covidseg.convert` (run `make setup` first: it installs the
`covidseg` package); see covidseg/data/conversion.py for what it checks and writes.
"""
from covidseg.convert import main
from covidseg.core.errors import main_guard

if __name__ == "__main__":
    main_guard(main)
