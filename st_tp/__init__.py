"""st_tp: Token Prepending (Fu et al., ACL 2025) for any decoder-only LLM, as a sentence-transformers module."""

from st_tp.build import build
from st_tp.config import TPConfig, load_preset
from st_tp.forward import tp_forward
from st_tp.module import TokenPrepending
from st_tp.prompts import PROMPTS

__all__ = ["PROMPTS", "TPConfig", "TokenPrepending", "build", "load_preset", "tp_forward"]
__version__ = "0.1.0"
