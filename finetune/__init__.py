"""electra-finetune: an ELECTRA discriminator checkpoint + a labelled file -> a task checkpoint that
`electra-export` takes unchanged (classify, qa, tag)."""
