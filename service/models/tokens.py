"""DeepSeek's LLM tokenizer special tokens, shared by every Janus family.

The `▁`/`｜` characters are part of the real token strings in the published
tokenizers; a typo here would silently tokenize them as text.
"""

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
IMAGE = "<image_placeholder>"
BOI = "<begin_of_image>"
EOI = "<end_of_image>"
BOG = "<｜begin▁of▁generation｜>"  # JanusFlow: starts image generation
USER = "<|User|>"
ASSISTANT = "<|Assistant|>"
