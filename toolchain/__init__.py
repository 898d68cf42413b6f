"""What electra-export, electra-finetune and electra-eval share, below all three: the errors their CLIs
report, the readers of the labelled file layouts, a classification table's columns and label set, the
task metrics, and the loading of a Hugging Face checkpoint (any framework's weights).

The direction, checked by `lint-imports` ([tool.importlinter] in pyproject.toml):

    export | finetune    (independent; only their entry points compose them)
    evaluation
    toolchain            (imports none of the three)
"""
