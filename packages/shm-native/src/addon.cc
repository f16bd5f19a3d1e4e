// N-API binding of what a shared-memory channel between two processes of one machine needs and JavaScript
// lacks: a file mapped MAP_SHARED as an ArrayBuffer, and futexes on 32-bit words in it. Atomics.wait cannot
// serve here: V8 keeps its waiters in a list of its own process, so a notify from another process never
// reaches them. A futex on a shared mapping is keyed by the page, so it does.
//
// A watcher is a thread that sleeps on one word of a mapping and, each time the word changes, calls a JavaScript
// function on the event loop (a thread-safe function). The caller's event loop never blocks; the price of a
// message is two wake-ups (the watcher, then the loop), microseconds each, against the HTTP/2 framing and the
// socket wake-ups of a gRPC call.
#include <node_api.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

#if defined(__linux__)
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#define MOELA_SHM 1
#endif

#define CHECK(call)                                        \
  do {                                                     \
    if ((call) != napi_ok) return throw_error(env, #call); \
  } while (0)

static napi_value throw_error(napi_env env, const char* what) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, nullptr, (std::string("moela shared memory: ") + what).c_str());
  return nullptr;
}

static napi_value throw_errno(napi_env env, const std::string& what, int err) {
  napi_throw_error(env, nullptr, ("moela shared memory: " + what + ": " + strerror(err)).c_str());
  return nullptr;
}

static napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

/** The word `index` of an Int32Array argument, checked: a 4-byte-aligned element inside the array. */
static std::atomic<int32_t>* word_of(napi_env env, napi_value array, napi_value indexArg) {
  bool isTyped = false;
  if (napi_is_typedarray(env, array, &isTyped) != napi_ok || !isTyped) return nullptr;
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  if (napi_get_typedarray_info(env, array, &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_int32_array) return nullptr;
  int64_t index = -1;
  if (napi_get_value_int64(env, indexArg, &index) != napi_ok || index < 0 || (uint64_t)index >= length) return nullptr;
  return reinterpret_cast<std::atomic<int32_t>*>(static_cast<int32_t*>(data) + index);
}

#ifdef MOELA_SHM
static long futex(std::atomic<int32_t>* word, int op, int32_t val, const struct timespec* timeout) {
  // Not FUTEX_PRIVATE_FLAG: the other side is another process.
  return syscall(SYS_futex, reinterpret_cast<int32_t*>(word), op, val, timeout, nullptr, 0);
}
#endif

// ---------------------------------------------------------------------------------------------------------
// Mappings

/**
 * map(path, bytes, create): the file mapped shared, as an ArrayBuffer. create makes a new file of `bytes` (0600,
 * failing if the name exists); otherwise the file must have `bytes`, or any size when bytes is 0.
 */
static napi_value Map(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  if (argc < 3) return throw_error(env, "map(path, bytes, create) takes 3 arguments");
  char path[4096];
  size_t pathLen = 0;
  CHECK(napi_get_value_string_utf8(env, argv[0], path, sizeof path, &pathLen));
  int64_t bytes = 0;
  CHECK(napi_get_value_int64(env, argv[1], &bytes));
  bool create = false;
  CHECK(napi_get_value_bool(env, argv[2], &create));
#ifdef MOELA_SHM
  const int fd = create ? open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600) : open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return throw_errno(env, std::string("open ") + path, errno);
  if (create) {
    if (bytes <= 0 || ftruncate(fd, bytes) != 0) {
      const int err = bytes <= 0 ? EINVAL : errno;
      close(fd);
      unlink(path);
      return throw_errno(env, std::string("size ") + path, err);
    }
  } else {
    struct stat st;
    if (fstat(fd, &st) != 0) {
      const int err = errno;
      close(fd);
      return throw_errno(env, std::string("stat ") + path, err);
    }
    if (bytes == 0) bytes = st.st_size;  // the whole file
    if (bytes <= 0 || st.st_size != bytes) {
      close(fd);
      napi_throw_range_error(env, nullptr, ("moela shared memory: " + std::string(path) + " has " + std::to_string(st.st_size) + " bytes, not " +
                                            std::to_string(bytes)).c_str());
      return nullptr;
    }
  }
  void* p = mmap(nullptr, (size_t)bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);  // the mapping keeps the file
  if (p == MAP_FAILED) return throw_errno(env, std::string("mmap ") + path, err);
  napi_value ab;
  const napi_status s = napi_create_external_arraybuffer(
      env, p, (size_t)bytes, [](napi_env, void* data, void* hint) { munmap(data, reinterpret_cast<size_t>(hint)); },
      reinterpret_cast<void*>((size_t)bytes), &ab);
  if (s != napi_ok) {
    munmap(p, (size_t)bytes);
    return throw_error(env, "napi_create_external_arraybuffer");
  }
  return ab;
#else
  (void)bytes;
  (void)create;
  return throw_error(env, "shared-memory channels need Linux");
#endif
}

/** unlink(path): removes the name; mappings stay valid until both sides drop them. */
static napi_value Unlink(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  char path[4096];
  size_t pathLen = 0;
  CHECK(napi_get_value_string_utf8(env, argv[0], path, sizeof path, &pathLen));
#ifdef MOELA_SHM
  if (unlink(path) != 0 && errno != ENOENT) return throw_errno(env, std::string("unlink ") + path, errno);
#endif
  return undefined(env);
}

/** wake(words, index): wakes every thread (of any process) sleeping on the word. */
static napi_value Wake(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  std::atomic<int32_t>* word = argc == 2 ? word_of(env, argv[0], argv[1]) : nullptr;
  if (word == nullptr) return throw_error(env, "wake(words, index) needs an Int32Array and an index inside it");
#ifdef MOELA_SHM
  futex(word, FUTEX_WAKE, INT_MAX, nullptr);
#endif
  return undefined(env);
}

/**
 * ringPair(words1, index1, words2, index2): sets both words to 1 and wakes the threads sleeping on either, in one
 * system call (FUTEX_WAKE_OP). Two wake calls would let the first woken thread take this one's core before the
 * second is woken, and the second peer would start only when this thread runs again.
 */
static napi_value RingPair(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  std::atomic<int32_t>* a = argc == 4 ? word_of(env, argv[0], argv[1]) : nullptr;
  std::atomic<int32_t>* b = argc == 4 ? word_of(env, argv[2], argv[3]) : nullptr;
  if (a == nullptr || b == nullptr) return throw_error(env, "ringPair(words1, index1, words2, index2) needs two Int32Arrays and indices inside them");
  a->store(1, std::memory_order_seq_cst);
#ifdef MOELA_SHM
  // The operation sets *b to 1 and wakes b's sleepers when its old value was >= 0; a doorbell holds 0 or 1.
  const int op = FUTEX_OP(FUTEX_OP_SET, 1, FUTEX_OP_CMP_GE, 0);
  syscall(SYS_futex, reinterpret_cast<int32_t*>(a), FUTEX_WAKE_OP, INT_MAX, (void*)(uintptr_t)INT_MAX, reinterpret_cast<int32_t*>(b), op);
#else
  b->store(1, std::memory_order_seq_cst);
#endif
  return undefined(env);
}

/**
 * wait(words, index, expected, timeoutMs): blocks this thread while words[index] == expected, at most timeoutMs;
 * returns true when the word had changed or a wake came, false on time-out.
 */
static napi_value Wait(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  std::atomic<int32_t>* word = argc == 4 ? word_of(env, argv[0], argv[1]) : nullptr;
  if (word == nullptr) return throw_error(env, "wait(words, index, expected, timeoutMs) needs an Int32Array and an index inside it");
  int32_t expected = 0;
  double timeoutMs = 0;
  CHECK(napi_get_value_int32(env, argv[2], &expected));
  CHECK(napi_get_value_double(env, argv[3], &timeoutMs));
  bool woke = true;
#ifdef MOELA_SHM
  if (word->load(std::memory_order_acquire) == expected) {
    const double ms = timeoutMs > 0 ? timeoutMs : 0;
    const struct timespec t = {(time_t)(ms / 1000), (long)(std::fmod(ms, 1000.0) * 1e6)};
    woke = !(futex(word, FUTEX_WAIT, expected, &t) != 0 && errno == ETIMEDOUT);
  }
#endif
  napi_value r;
  CHECK(napi_get_boolean(env, woke, &r));
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// Watchers

struct Watcher {
  std::atomic<int32_t>* word = nullptr;
  napi_ref arrayRef = nullptr;  // keeps the mapping alive while the thread reads it
  napi_threadsafe_function tsfn = nullptr;
  std::thread thread;
  std::atomic<bool> stop{false};
  std::atomic<bool> queued{false};  // a call is on its way to the loop: later changes ride on it
  bool closed = false;
  // Owned by the JavaScript handle and by the thread-safe function, each of which may go first.
  std::atomic<int> owners{2};
  int32_t seen = 0;  // the value when watch() was called: a change made before the thread starts still counts

  void release() {
    if (owners.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  void run() {
#ifdef MOELA_SHM
    const struct timespec tick = {0, 200 * 1000 * 1000};  // a lost wake-up costs at most this
    while (!stop.load(std::memory_order_acquire)) {
      const int32_t v = word->load(std::memory_order_acquire);
      if (v != seen) {
        seen = v;
        if (!queued.exchange(true, std::memory_order_acq_rel)) napi_call_threadsafe_function(tsfn, nullptr, napi_tsfn_nonblocking);
        continue;
      }
      futex(word, FUTEX_WAIT, v, &tick);
    }
#endif
  }
};

/** Stops the thread and lets go of the function and the mapping; idempotent. env is null at teardown. */
static void close_watcher(napi_env env, Watcher* w) {
  if (w->closed) return;
  w->closed = true;
  w->stop.store(true, std::memory_order_release);
#ifdef MOELA_SHM
  futex(w->word, FUTEX_WAKE, INT_MAX, nullptr);
#endif
  if (w->thread.joinable()) w->thread.join();
  napi_release_threadsafe_function(w->tsfn, napi_tsfn_abort);
  if (env != nullptr && w->arrayRef != nullptr) napi_delete_reference(env, w->arrayRef);
  w->arrayRef = nullptr;
}

static void close_at_teardown(void* data) { close_watcher(nullptr, static_cast<Watcher*>(data)); }

static void call_js(napi_env env, napi_value fn, void* context, void*) {
  Watcher* w = static_cast<Watcher*>(context);
  // Cleared before the call: a change made while the callback runs queues the next one.
  w->queued.store(false, std::memory_order_release);
  if (env == nullptr || fn == nullptr || w->closed) return;
  napi_value global;
  if (napi_get_global(env, &global) != napi_ok) return;
  napi_call_function(env, global, fn, 0, nullptr, nullptr);
}

static napi_value CloseWatcher(napi_env env, napi_callback_info info) {
  napi_value self;
  CHECK(napi_get_cb_info(env, info, nullptr, nullptr, &self, nullptr));
  void* data = nullptr;
  if (napi_unwrap(env, self, &data) != napi_ok || data == nullptr) return throw_error(env, "close() must be called on a watcher");
  close_watcher(env, static_cast<Watcher*>(data));
  return undefined(env);
}

/**
 * watch(words, index, onChange): a thread sleeps on the word and calls onChange() on this event loop whenever
 * the word's value changes (several changes may come as one call). Returns { close() }; an unclosed watcher is
 * closed when its handle is collected or the environment ends. It does not keep the process alive.
 */
static napi_value Watch(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  std::atomic<int32_t>* word = argc == 3 ? word_of(env, argv[0], argv[1]) : nullptr;
  napi_valuetype fnType = napi_undefined;
  if (argc == 3) napi_typeof(env, argv[2], &fnType);
  if (word == nullptr || fnType != napi_function) return throw_error(env, "watch(words, index, onChange) needs an Int32Array, an index inside it and a function");
  napi_value handle, closeFn, name;
  CHECK(napi_create_object(env, &handle));
  CHECK(napi_create_function(env, "close", NAPI_AUTO_LENGTH, CloseWatcher, nullptr, &closeFn));
  CHECK(napi_set_named_property(env, handle, "close", closeFn));
  CHECK(napi_create_string_utf8(env, "moela shared-memory watcher", NAPI_AUTO_LENGTH, &name));
  Watcher* w = new Watcher();
  w->word = word;
  w->seen = word->load(std::memory_order_acquire);
  if (napi_create_reference(env, argv[0], 1, &w->arrayRef) != napi_ok ||
      napi_create_threadsafe_function(env, argv[2], nullptr, name, 0, 1, w, [](napi_env, void* data, void*) { static_cast<Watcher*>(data)->release(); }, w,
                                      call_js, &w->tsfn) != napi_ok) {
    if (w->arrayRef != nullptr) napi_delete_reference(env, w->arrayRef);
    delete w;
    return throw_error(env, "napi_create_threadsafe_function");
  }
  napi_unref_threadsafe_function(env, w->tsfn);
  CHECK(napi_wrap(
      env, handle, w,
      [](napi_env env, void* data, void*) {
        Watcher* w = static_cast<Watcher*>(data);
        napi_remove_env_cleanup_hook(env, close_at_teardown, w);
        close_watcher(env, w);
        w->release();
      },
      nullptr, nullptr));
  napi_add_env_cleanup_hook(env, close_at_teardown, w);
  w->thread = std::thread([w] { w->run(); });
  return handle;
}

static napi_value Init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"map", nullptr, Map, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"ringPair", nullptr, RingPair, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"unlink", nullptr, Unlink, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"wake", nullptr, Wake, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"wait", nullptr, Wait, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"watch", nullptr, Watch, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
