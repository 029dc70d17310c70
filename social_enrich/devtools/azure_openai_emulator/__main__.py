"""Entry point of ``python -m social_enrich.devtools.azure_openai_emulator``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
