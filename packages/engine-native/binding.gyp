{
  "target_defaults": {
    "cflags_cc": ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-fvisibility=hidden", "-Wno-maybe-uninitialized"],
    "cflags_cc!": ["-fno-exceptions"]
  },
  "targets": [
    {
      "target_name": "moela_kernels_portable",
      "type": "static_library",
      "sources": ["src/isa-portable.cc"]
    },
    {
      "target_name": "moela_kernels",
      "sources": ["src/addon.cc"],
      "dependencies": ["moela_kernels_portable"],
      "conditions": [
        ["target_arch=='x64'", {
          "defines": ["MOELA_HAS_X86_KERNELS=1"],
          "dependencies": ["moela_kernels_avx2", "moela_kernels_avx512"]
        }]
      ]
    }
  ],
  "conditions": [
    ["target_arch=='x64'", {
      "targets": [
        {
          "target_name": "moela_kernels_avx2",
          "type": "static_library",
          "sources": ["src/isa-avx2.cc"],
          "cflags_cc": ["-mavx2", "-mfma", "-mf16c"]
        },
        {
          "target_name": "moela_kernels_avx512",
          "type": "static_library",
          "sources": ["src/isa-avx512.cc"],
          "cflags_cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]
        }
      ]
    }]
  ]
}
