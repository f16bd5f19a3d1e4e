{
  "targets": [
    {
      "target_name": "moela_shm",
      "sources": ["src/addon.cc"],
      "cflags_cc": ["-O2", "-std=c++17", "-fvisibility=hidden"],
      "cflags_cc!": ["-fno-exceptions"]
    }
  ]
}
