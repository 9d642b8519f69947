"""The built-in model: llama.cpp on the CPU, its GGUF file, and the process that serves it."""
