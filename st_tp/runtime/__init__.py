"""The TP runtime: prompts, settings, the TP pass (packing, row skipping, prefix cache, pass state, decoder
conventions, transformers compatibility), the TP runner that everything running the pass calls (runner.py) and the
sentence-transformers module.

It imports nothing from the tooling above it (st_tp.builder, base_model, corpus, sweep, evaluation, cli), and its
modules import each other relatively, so the folder can be shipped as plain files beside a saved model."""
