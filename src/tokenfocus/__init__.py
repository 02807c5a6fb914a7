"""TokenFocus-VQA: image-text alignment scoring, overall and per element."""
