"""The class a saved st_tp folder names in its modules.json: `token_prepending.TokenPrepending`.

It is a top-level module of the st_tp distribution because sentence-transformers resolves a class reference
`<file>.<Class>` first to a file of that name beside the weights (with `trust_remote_code=True`; st_tp saves
st_tp/runtime/token_prepending.py there, with the runtime), then to an installed module of that name: this one. So a
folder loads where st_tp is not installed, and where it is, this class (the installed runtime) runs.
"""

from st_tp.runtime.module import TokenPrepending as RuntimeTokenPrepending


class TokenPrepending(RuntimeTokenPrepending):
    """Token Prepending (st_tp.runtime.module.TokenPrepending) under the name saved folders load it by."""


__all__ = ["TokenPrepending"]
