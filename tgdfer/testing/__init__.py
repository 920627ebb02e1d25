"""Generated data for tests, benchmarks and the demo (``synthetic``): drawn face clips, dataset trees, videos and
feature caches written through the real writers. It sits below the apps (``tests/test_layout.py``), so the demo
draws its clips from here too."""
