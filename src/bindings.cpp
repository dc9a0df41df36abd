// Python bindings for the kernel library: check every array, take pointers, release the GIL, call cpp/.
// Nothing is converted silently: arrays written in place must already have the exact dtype and layout.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <pthread.h>

#include "blas.hpp"
#include "blas_threads.hpp"
#include "limits.hpp"
#include "linear.hpp"
#include "linear_step.hpp"
#include "network.hpp"
#include "newton.hpp"
#include "optim.hpp"
#include "parallel.hpp"
#include "shuffle.hpp"
#include "update.hpp"

namespace py = pybind11;
using l2fast::Loss;

namespace {

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

py::array as_array(const py::handle& obj, const std::string& name) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(name + ": expected a numpy.ndarray, got " + std::string(py::str(py::type::handle_of(obj))));
    return py::reinterpret_borrow<py::array>(obj);
}

// Checks dtype (exact), shape (-1 matches any extent), C order and, for outputs, writeability.
template <class T>
py::array checked(const py::handle& obj, const std::string& name, std::vector<py::ssize_t> shape,
                  bool written = false) {
    py::array a = as_array(obj, name);
    if (!a.dtype().equal(py::dtype::of<T>()))
        throw py::type_error(name + ": expected dtype " + std::string(py::str(py::dtype::of<T>())) + ", got " +
                             std::string(py::str(a.dtype())));
    bool ok = a.ndim() == py::ssize_t(shape.size());
    for (std::size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
    if (!ok) {
        std::string want = "(";
        for (std::size_t i = 0; i < shape.size(); ++i)
            want += (i ? ", " : "") + (shape[i] < 0 ? std::string("any") : std::to_string(shape[i]));
        throw std::invalid_argument(name + ": expected shape " + want + (shape.size() == 1 ? ",)" : ")") +
                                    ", got " + shape_str(a));
    }
    if (!(a.flags() & py::array::c_style))
        throw std::invalid_argument(name + ": array must be C-contiguous");
    if (written && !a.writeable()) throw std::invalid_argument(name + ": array is read-only");
    return a;
}

// Arrays that are only read may be read-only; the kernels never write through these pointers then.
template <class T>
T* ptr(const py::array& a) {
    return static_cast<T*>(const_cast<void*>(a.data()));
}

template <class T>
const T* cptr(const py::array& a) {
    return static_cast<const T*>(a.data());
}

// The network as the kernels see it, with the Python arrays kept alive beside their pointers.
template <class T>
struct Net {
    l2fast::Shape shape;
    std::vector<py::array> keep;
    l2fast::Params<T> params;
};

template <class T>
Net<T> take_network(const py::list& weights, const py::list& biases, const std::string& activation,
                    const std::string& loss, bool written) {
    Net<T> net;
    net.shape.act = l2fast::parse_activation(activation);
    net.shape.loss = l2fast::parse_loss(loss);
    if (weights.size() == 0) throw std::invalid_argument("weights: need at least one layer");
    if (biases.size() != weights.size())
        throw std::invalid_argument("biases: expected " + std::to_string(weights.size()) + " arrays, got " +
                                    std::to_string(biases.size()));
    for (std::size_t l = 0; l < weights.size(); ++l) {
        const std::string wname = "weights[" + std::to_string(l) + "]";
        py::array w0 = as_array(weights[l], wname);
        if (w0.ndim() != 2) throw std::invalid_argument(wname + ": expected a 2-D array, got " + shape_str(w0));
        if (l == 0) net.shape.sizes.push_back(std::size_t(w0.shape(1)));
        const py::ssize_t n_in = py::ssize_t(net.shape.sizes.back()), n_out = w0.shape(0);
        py::array w = checked<T>(w0, wname, {n_out, n_in}, written);
        py::array b = checked<T>(biases[l], "biases[" + std::to_string(l) + "]", {n_out}, written);
        net.shape.sizes.push_back(std::size_t(n_out));
        net.params.W.push_back(ptr<T>(w));
        net.params.b.push_back(ptr<T>(b));
        net.keep.push_back(std::move(w));
        net.keep.push_back(std::move(b));
    }
    l2fast::check_shape(net.shape);
    for (std::size_t size : net.shape.sizes)
        if (size > std::size_t(std::numeric_limits<int>::max()))
            throw std::invalid_argument("weights: a layer of more than 2^31 - 1 units is beyond BLAS's int sizes");
    return net;
}

// x * 0 is 0 for a finite x and NaN for an infinite or NaN one, so a range is finite when the sum of those
// products is 0. Sixteen partial sums, so that the loop vectorises without any reordering the compiler was
// not told to make: this check reads every byte of X on every call, and ran at a third of the memory's speed
// as a scalar loop.
template <class T>
L2FAST_VECTOR_CLONES bool finite_range(const T* values, std::size_t n) {
    constexpr std::size_t kLanes = 16;
    T lanes[kLanes] = {};
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (std::size_t l = 0; l < kLanes; ++l) lanes[l] += values[i + l] * T(0);
    T sum = T(0);
    for (; i < n; ++i) sum += values[i] * T(0);
    for (std::size_t l = 0; l < kLanes; ++l) sum += lanes[l];
    return sum == T(0);
}

// The README's promise that NaN and infinity never reach a kernel holds at this layer too: one vectorised
// pass shared by l2fast's helper threads, then a second only to name the index.
template <class T>
bool all_finite(const T* values, std::size_t n) {
    std::atomic<bool> finite{true};
    l2fast::parallel_for(n, std::size_t(std::max(l2fast::blas::num_threads(), 1)), std::size_t(1) << 20,
                         [&](std::size_t begin, std::size_t end) {
                             if (!finite_range(values + begin, end - begin)) finite.store(false);
                         });
    return finite.load();
}

template <class T>
void check_finite(const T* values, std::size_t n, const char* name) {
    if (all_finite(values, n)) return;
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(values[i]))
            throw std::invalid_argument(std::string(name) + ": contains NaN or infinity (at flat index " +
                                        std::to_string(i) + ")");
}

// Memory for the int64 arrays made afresh on every epoch (the private copies of labels and order below, epoch_order's
// permutations), kept between calls. At config A's 100k records each is 800 KB, which glibc hands back to the kernel
// once freed (past its trim threshold), so every epoch faulted the pages of two or three of them in again: 360 page
// faults an epoch, about 0.4 ms of 100 -> 1's 3 ms. An array takes the smallest kept buffer that holds it, the newest
// of those (or a new one), and gives it back when it dies; at most kKept buffers and kKeptBytes wait, the newest
// kept. Used only with the GIL held (the capsule's destructor too), which serialises the list.
class Int64Buffers {
public:
    static py::array_t<std::int64_t> array(std::size_t n) {
        std::vector<std::unique_ptr<Buffer>>& kept = list();
        std::unique_ptr<Buffer> buffer;
        std::size_t best = kept.size();
        for (std::size_t i = 0; i < kept.size(); ++i)
            if (kept[i]->size() >= n && (best == kept.size() || kept[i]->size() <= kept[best]->size())) best = i;
        if (best < kept.size()) {
            buffer = std::move(kept[best]);
            kept.erase(kept.begin() + std::ptrdiff_t(best));
        } else {
            buffer = std::make_unique<Buffer>(std::max<std::size_t>(n, 1));
        }
        std::int64_t* data = buffer->data();
        py::capsule owner(buffer.release(), [](void* p) { give_back(std::unique_ptr<Buffer>(static_cast<Buffer*>(p))); });
        return py::array_t<std::int64_t>({py::ssize_t(n)}, {py::ssize_t(sizeof(std::int64_t))}, data, owner);
    }

private:
    using Buffer = std::vector<std::int64_t>;
    static constexpr std::size_t kKept = 4, kKeptBytes = std::size_t(32) << 20;

    static std::vector<std::unique_ptr<Buffer>>& list() {
        static auto* kept = new std::vector<std::unique_ptr<Buffer>>();  // never destroyed: capsules may outlive exit
        return *kept;
    }

    // The buffer back on the list, which then keeps its newest buffers within kKept and kKeptBytes.
    static void give_back(std::unique_ptr<Buffer> buffer) {
        std::vector<std::unique_ptr<Buffer>>& kept = list();
        kept.push_back(std::move(buffer));
        std::size_t bytes = 0, count = 0;
        for (std::size_t i = kept.size(); i-- > 0;) {
            const std::size_t size = kept[i]->size() * sizeof(std::int64_t);
            if (count < kKept && bytes + size <= kKeptBytes) {
                bytes += size;
                ++count;
            } else {
                kept.erase(kept.begin() + std::ptrdiff_t(i));
            }
        }
    }
};

// Arrays the kernels index with (labels, order: int64, 1-D) are copied while the GIL is held: checked once, they
// can then change under no one's hands during the call, whoever else writes the caller's buffer (another
// thread, or a kernel stepping the parameters or optimizer state the buffer is a view of).
py::array private_copy(const py::array& a) {
    py::array copy = Int64Buffers::array(std::size_t(a.shape(0)));
    std::memcpy(copy.mutable_data(), a.data(), std::size_t(a.nbytes()));
    return copy;
}

// What take_data checks of X beyond its dtype and shape: everything (All); a sparse X's structure but not that its
// values are finite (Structure: X came through features() or a Dataset, which scanned it); nothing (None: only for
// kernels that never read outside X's arrays, whatever they hold: newton.hpp's).
enum class XChecks { All, Structure, None };

// Sparse X as the tuple (data, indices, indptr, shape) of a CSR matrix: data of T, indices and indptr both int32
// or both int64, shape (m, n_in); the whole structure is checked (l2fast::check_csr) before the kernels see it.
template <class T>
void take_sparse_X(const l2fast::Shape& shape, const py::tuple& csr, l2fast::Dataset<T>& data,
                   std::vector<py::array>& keep, XChecks checks = XChecks::All) {
    if (csr.size() != 4) throw py::type_error("X: a sparse X is the tuple (data, indices, indptr, shape)");
    const auto dims = csr[3].cast<std::vector<long long>>();
    if (dims.size() != 2 || dims[0] < 0 || dims[1] != (long long)shape.n_in())
        throw std::invalid_argument("X: expected a sparse shape (m, " + std::to_string(shape.n_in()) + ")");
    if (dims[0] == 0) throw std::invalid_argument("X: no records (0 rows)");
    py::array values = checked<T>(csr[0], "X.data", {-1});
    py::array indices = as_array(csr[1], "X.indices");
    l2fast::Csr<T>& X = data.X_csr;
    X.data = cptr<T>(values);
    X.rows = std::size_t(dims[0]);
    X.cols = shape.n_in();
    X.nnz = std::size_t(values.shape(0));
    const py::ssize_t n_ptr = py::ssize_t(dims[0]) + 1;
    py::array indptr;
    if (indices.dtype().equal(py::dtype::of<std::int64_t>())) {
        indices = checked<std::int64_t>(indices, "X.indices", {values.shape(0)});
        indptr = checked<std::int64_t>(csr[2], "X.indptr", {n_ptr});
        X.indices64 = cptr<std::int64_t>(indices);
        X.indptr64 = cptr<std::int64_t>(indptr);
    } else if (indices.dtype().equal(py::dtype::of<std::int32_t>())) {
        indices = checked<std::int32_t>(indices, "X.indices", {values.shape(0)});
        indptr = checked<std::int32_t>(csr[2], "X.indptr", {n_ptr});
        X.indices32 = cptr<std::int32_t>(indices);
        X.indptr32 = cptr<std::int32_t>(indptr);
    } else {
        throw py::type_error("X.indices: expected dtype int32 or int64, got " + std::string(py::str(indices.dtype())));
    }
    if (checks != XChecks::None) l2fast::check_csr(X, "X");  // None: only for kernels that stay within X's arrays
    if (checks == XChecks::All) check_finite(X.data, X.nnz, "X");  // whatever they hold (newton.hpp)
    data.sparse = true;
    data.m = X.rows;
    keep.insert(keep.end(), {values, indices, indptr});
}

// X (m x n_in) and the targets in the layout the loss needs: int64 labels (m,) or T values (m, n_out),
// with optional sample weights (m,) of T, finite and >= 0.
template <class T>
l2fast::Dataset<T> take_data(const l2fast::Shape& shape, const py::handle& X_obj, const py::handle& y_obj,
                             std::vector<py::array>& keep, const py::handle& weights_obj = py::none(),
                             XChecks checks = XChecks::All) {
    l2fast::Dataset<T> data;
    if (py::isinstance<py::tuple>(X_obj)) {
        take_sparse_X(shape, X_obj.cast<py::tuple>(), data, keep, checks);
    } else {
        py::array X = checked<T>(X_obj, "X", {-1, py::ssize_t(shape.n_in())});
        if (X.shape(0) == 0) throw std::invalid_argument("X: no records (0 rows)");
        if (checks == XChecks::All) check_finite(cptr<T>(X), std::size_t(X.size()), "X");
        data.X = cptr<T>(X);
        data.m = std::size_t(X.shape(0));
        keep.push_back(X);
    }
    if (y_obj.is_none()) return data;
    const py::ssize_t m = py::ssize_t(data.m);
    if (shape.loss == Loss::Softmax) {
        py::array y = private_copy(checked<std::int64_t>(y_obj, "y", {m}));
        data.y_labels = cptr<std::int64_t>(y);
        l2fast::check_labels(data.y_labels, data.m, shape.n_out());
        keep.push_back(y);
    } else {
        py::array y = checked<T>(y_obj, "y", {m, py::ssize_t(shape.n_out())});
        data.y_values = cptr<T>(y);
        check_finite(data.y_values, std::size_t(y.size()), "y");
        if (shape.loss == Loss::Logistic) {
            const std::size_t i = l2fast::first_not_binary(data.y_values, data.m);
            if (i < data.m)
                throw std::invalid_argument("y: logistic labels must be 0 or 1, found " +
                                            std::to_string(data.y_values[i]) + " at index " + std::to_string(i));
        }
        keep.push_back(y);
    }
    if (!weights_obj.is_none()) {
        py::array w = checked<T>(weights_obj, "sample_weight", {m});
        data.weights = cptr<T>(w);
        const std::size_t i = l2fast::first_not_weight(data.weights, data.m);
        if (i < data.m)
            throw std::invalid_argument("sample_weight: weights must be finite and >= 0, found " +
                                        std::to_string(data.weights[i]) + " at index " + std::to_string(i));
        keep.push_back(w);
    }
    return data;
}

double finite_scalar(double v, const char* name, bool positive) {
    if (!std::isfinite(v) || (positive ? v <= 0 : v < 0))
        throw std::invalid_argument(std::string(name) + (positive ? " must be a finite number > 0, got "
                                                                  : " must be a finite number >= 0, got ") +
                                    std::to_string(v));
    return v;
}

// Whether a dtype given by name is float32 (else float64); throws naming it otherwise.
bool is_float32(const std::string& dtype) {
    if (dtype != "float32" && dtype != "float64")
        throw std::invalid_argument("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
    return dtype == "float32";
}

// The layer sizes of a network the thread rules ask about: [n_in, ..., n_out]; throws naming them otherwise.
const std::vector<std::size_t>& checked_layer_sizes(const std::vector<std::size_t>& layer_sizes) {
    if (layer_sizes.size() < 2) throw std::invalid_argument("layer_sizes: need at least [n_in, n_out]");
    return layer_sizes;
}

// batch_size of the thread-rule queries (the step's records): >= 1; throws naming it otherwise.
std::size_t checked_batch_size(std::size_t batch_size) {
    if (batch_size < 1) throw std::invalid_argument("batch_size must be >= 1");
    return batch_size;
}

// share_threads (train_epoch's, gradients'): a count >= 0; throws naming it otherwise.
std::size_t checked_share_threads(long long share_threads) {
    if (share_threads < 0)
        throw std::invalid_argument("share_threads must be >= 0, got " + std::to_string(share_threads));
    return std::size_t(share_threads);
}

py::tuple stats_tuple(const l2fast::LossStats& s) { return py::make_tuple(s.loss_sum, s.correct); }

// What one training epoch reads besides the parameters: the data, the order (null: records in turn)
// and how many records it visits, all checked, with batch_size and lr.
template <class T>
struct Epoch {
    l2fast::Dataset<T> data;
    const std::int64_t* order = nullptr;
    std::size_t n = 0;
};

template <class T>
Epoch<T> take_epoch(const l2fast::Shape& shape, const py::handle& X, const py::handle& y, const py::handle& order_obj,
                    long long batch_size, double lr, std::vector<py::array>& keep, const py::handle& sample_weight,
                    bool check_X_finite) {
    if (y.is_none()) throw std::invalid_argument("y: targets are required for training");
    Epoch<T> epoch;
    epoch.data = take_data<T>(shape, X, y, keep, sample_weight, check_X_finite ? XChecks::All : XChecks::Structure);
    epoch.n = epoch.data.m;
    if (batch_size < 1) throw std::invalid_argument("batch_size must be >= 1, got " + std::to_string(batch_size));
    if (std::min<long long>(batch_size, (long long)epoch.data.m) > std::numeric_limits<int>::max())
        throw std::invalid_argument("batch_size: more than 2^31 - 1 records in one batch is beyond BLAS's int sizes");
    finite_scalar(lr, "lr", true);
    if (!order_obj.is_none()) {
        py::array o = private_copy(checked<std::int64_t>(order_obj, "order", {-1}));
        epoch.order = cptr<std::int64_t>(o);
        epoch.n = std::size_t(o.shape(0));
        l2fast::check_order(epoch.order, epoch.n, epoch.data.m);
        keep.push_back(o);
    }
    return epoch;
}

// Interpreter exit with a daemon thread inside a kernel: a thread that re-takes the GIL once CPython is
// finalizing is ended by pthread_exit, whose unwinding through the C++ frames (a destructor re-taking
// the GIL on the way) aborts the process. So the module's atexit handler (run before finalizing starts)
// raises `shutting_down` and waits until no kernel is in flight; a kernel thread that finds the flag up
// ends its epoch early and parks for good without the GIL, as CPython 3.14 parks its own daemon threads.
std::atomic<bool> shutting_down{false};
std::atomic<int> in_flight{0};

bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return shutting_down.load() || Py_IsFinalizing();
#else
    return shutting_down.load() || _Py_IsFinalizing();
#endif
}

[[noreturn]] void park_forever() {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(24));
}

void wait_for_kernels_at_exit() {
    shutting_down.store(true);
    py::gil_scoped_release release;  // the kernels in flight may need the GIL for their stop checks
    while (in_flight.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

// Releases the GIL for a kernel call (take every pointer before), in place of pybind11's
// gil_scoped_release: at interpreter exit it parks the thread instead of re-taking the GIL.
class ReleasedGil {
public:
    ReleasedGil() {
        if (shutting_down.load()) throw std::runtime_error("l2fast: the interpreter is shutting down");
        in_flight.fetch_add(1);
        saved_ = PyEval_SaveThread();
    }
    ~ReleasedGil() {
        if (finalizing()) {
            in_flight.fetch_sub(1);
            park_forever();
        }
        PyEval_RestoreThread(saved_);
        in_flight.fetch_sub(1);
    }
    ReleasedGil(const ReleasedGil&) = delete;
    ReleasedGil& operator=(const ReleasedGil&) = delete;

private:
    PyThreadState* saved_ = nullptr;
};

// Ctrl-C: Python only runs its signal handler between bytecodes, so the epochs ask for it.
bool interrupted() {
    if (finalizing()) return true;  // the epoch ends; ReleasedGil then parks the thread
    py::gil_scoped_acquire acquire;
    return PyErr_CheckSignals() != 0;
}

// Checks the arrays written in place do not share memory: two models stepping the same weights at
// once (OpenBLAS runs a batch's products side by side) would race.
void check_disjoint(const std::vector<py::array>& arrays, const char* what) {
    std::vector<std::pair<const char*, const char*>> spans;
    for (const py::array& a : arrays) {
        const char* begin = static_cast<const char*>(a.data());
        spans.emplace_back(begin, begin + a.nbytes());
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t i = 1; i < spans.size(); ++i)
        if (spans[i].first < spans[i - 1].second)
            throw std::invalid_argument(std::string(what) +
                                        ": two arrays written in place share memory; each needs its own");
}

// Refuses data (X, target values) that shares memory with an array the epoch writes: the steps would
// change the records under the products reading them. (Labels and order are private copies already.)
void check_not_written(const std::vector<py::array>& read, const std::vector<py::array>& written,
                       const char* message = "X, y: the training data shares memory with an array written in place") {
    for (const py::array& r : read) {
        const char* r0 = static_cast<const char*>(r.data());
        for (const py::array& w : written) {
            const char* w0 = static_cast<const char*>(w.data());
            if (r0 < w0 + w.nbytes() && w0 < r0 + r.nbytes())
                throw std::invalid_argument(message);
        }
    }
}

// The optimizer's hyperparameters as the bindings receive them (see l2fast.optim).
struct OptimizerArgs {
    std::string name = "sgd";
    double momentum = 0.9;
    bool nesterov = false;
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    bool decoupled = false;
    bool eps_on_v = false;

    l2fast::Optimizer parse() const {
        l2fast::Optimizer opt;
        opt.method = l2fast::parse_method(name);
        opt.momentum = momentum;
        opt.nesterov = nesterov;
        opt.beta1 = beta1;
        opt.beta2 = beta2;
        opt.eps = eps;
        opt.decoupled = decoupled;
        opt.eps_on_v = eps_on_v;
        l2fast::check_optimizer(opt);
        return opt;
    }
};

// slots[s] is a list of 2L arrays, [W_0 .. W_{L-1}, b_0 .. b_{L-1}], each shaped like its parameter
// and written in place.
template <class T>
std::vector<l2fast::Params<T>> take_slots(const l2fast::Shape& shape, const py::list& slots, std::size_t n_slots,
                                          std::vector<py::array>& keep) {
    if (slots.size() != n_slots)
        throw std::invalid_argument("slots: this optimizer keeps " + std::to_string(n_slots) +
                                    " state arrays per parameter, got " + std::to_string(slots.size()));
    const std::size_t L = shape.n_layers();
    std::vector<l2fast::Params<T>> taken(n_slots);
    for (std::size_t s = 0; s < n_slots; ++s) {
        const std::string at = "slots[" + std::to_string(s) + "]";
        if (!py::isinstance<py::list>(slots[s]) || slots[s].cast<py::list>().size() != 2 * L)
            throw std::invalid_argument(at + ": expected a list of " + std::to_string(2 * L) +
                                        " arrays, the weights' then the biases'");
        const py::list arrays = slots[s].cast<py::list>();
        for (std::size_t l = 0; l < L; ++l) {
            const py::ssize_t n_out = py::ssize_t(shape.sizes[l + 1]), n_in = py::ssize_t(shape.sizes[l]);
            py::array w = checked<T>(arrays[l], at + "[" + std::to_string(l) + "]", {n_out, n_in}, true);
            py::array b = checked<T>(arrays[L + l], at + "[" + std::to_string(L + l) + "]", {n_out}, true);
            taken[s].W.push_back(ptr<T>(w));
            taken[s].b.push_back(ptr<T>(b));
            keep.push_back(std::move(w));
            keep.push_back(std::move(b));
        }
    }
    return taken;
}

template <class T>
py::tuple train_epoch_t(const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
                        const py::handle& order_obj, long long batch_size, double lr, double lam_over_m,
                        const std::string& activation, const std::string& loss, const OptimizerArgs& args,
                        const py::list& slots, long long step, const py::handle& sample_weight, bool check_X_finite,
                        bool with_norms, std::optional<double> short_lam_over_m, long long share_threads) {
    Net<T> net = take_network<T>(weights, biases, activation, loss, true);
    finite_scalar(lam_over_m, "lam_over_m", false);
    if (short_lam_over_m) finite_scalar(*short_lam_over_m, "short_lam_over_m", false);
    l2fast::OptimizerRun<T> run;
    run.opt = args.parse();
    if (step < 0) throw std::invalid_argument("step must be >= 0, got " + std::to_string(step));
    const std::size_t threads_for_shares = checked_share_threads(share_threads);
    run.step = step;
    std::vector<py::array> written = net.keep;
    run.slots = take_slots<T>(net.shape, slots, run.opt.n_slots(), written);
    check_disjoint(written, "slots");
    std::vector<py::array> read;
    const Epoch<T> epoch = take_epoch<T>(net.shape, X, y, order_obj, batch_size, lr, read, sample_weight, check_X_finite);
    check_not_written(read, written);
    const std::int64_t steps = std::int64_t(epoch.n / std::size_t(batch_size) + (epoch.n % std::size_t(batch_size) != 0));
    if (step > std::numeric_limits<std::int64_t>::max() - steps)
        throw std::invalid_argument("step: " + std::to_string(step) + " plus this epoch's " + std::to_string(steps) +
                                    " steps overflows a 64-bit count");
    l2fast::EpochResult result;
    {
        ReleasedGil release;
        result = l2fast::train_epoch(net.shape, net.params, epoch.data, epoch.order, epoch.n,
                                     std::size_t(batch_size), T(lr), T(lam_over_m), interrupted, &run, with_norms,
                                     short_lam_over_m ? std::optional<T>(T(*short_lam_over_m)) : std::nullopt,
                                     threads_for_shares);
    }
    if (result.stopped) throw py::error_already_set();  // the KeyboardInterrupt the handler raised
    if (with_norms) return py::make_tuple(result.stats.loss_sum, result.stats.correct, result.weight_norms);
    return stats_tuple(result.stats);
}

template <class T>
py::list train_epoch_stacked_t(const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
                               const py::handle& order_obj, long long batch_size, double lr,
                               const std::vector<double>& lam_over_m, const std::string& activation,
                               const std::string& loss, const py::handle& sample_weight, bool check_X_finite) {
    if (weights.size() == 0) throw std::invalid_argument("weights: need at least one model");
    if (biases.size() != weights.size())
        throw std::invalid_argument("biases: expected " + std::to_string(weights.size()) + " models, got " +
                                    std::to_string(biases.size()));
    if (lam_over_m.size() != weights.size())
        throw std::invalid_argument("lam_over_m: expected one value per model (" + std::to_string(weights.size()) +
                                    "), got " + std::to_string(lam_over_m.size()));
    std::vector<Net<T>> nets;
    std::vector<l2fast::Params<T>> models;
    std::vector<py::array> written;
    std::vector<T> lams;
    for (std::size_t k = 0; k < weights.size(); ++k) {
        const std::string at = "[" + std::to_string(k) + "]";
        if (!py::isinstance<py::list>(weights[k]) || !py::isinstance<py::list>(biases[k]))
            throw py::type_error("weights" + at + ", biases" + at + ": expected a list of arrays per model");
        nets.push_back(take_network<T>(weights[k].cast<py::list>(), biases[k].cast<py::list>(), activation, loss, true));
        if (nets.back().shape.sizes != nets.front().shape.sizes)
            throw std::invalid_argument("weights" + at + ": every model needs the layer sizes of model 0");
        models.push_back(nets.back().params);
        written.insert(written.end(), nets.back().keep.begin(), nets.back().keep.end());
        lams.push_back(T(finite_scalar(lam_over_m[k], "lam_over_m", false)));
    }
    check_disjoint(written, "weights");
    std::vector<py::array> keep;
    const l2fast::Shape& shape = nets.front().shape;
    const Epoch<T> epoch = take_epoch<T>(shape, X, y, order_obj, batch_size, lr, keep, sample_weight, check_X_finite);
    check_not_written(keep, written);
    l2fast::StackedEpochResult result;
    {
        ReleasedGil release;
        result = l2fast::train_epoch_stacked(shape, models, epoch.data, epoch.order, epoch.n, std::size_t(batch_size),
                                             T(lr), lams, interrupted);
    }
    if (result.stopped) throw py::error_already_set();
    py::list stats;
    for (const l2fast::LossStats& s : result.stats) stats.append(stats_tuple(s));
    return stats;
}

template <class T>
py::array predict_t(const py::list& weights, const py::list& biases, const py::handle& X,
                    const std::string& activation, const std::string& loss) {
    Net<T> net = take_network<T>(weights, biases, activation, loss, false);
    const l2fast::Dataset<T> data = take_data<T>(net.shape, X, py::none(), net.keep);
    py::array_t<T> out({py::ssize_t(data.m), py::ssize_t(net.shape.n_out())});
    T* out_ptr = out.mutable_data();
    {
        ReleasedGil release;
        l2fast::predict(net.shape, net.params, data, out_ptr);
    }
    return out;
}

template <class T>
py::tuple evaluate_t(const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
                     const std::string& activation, const std::string& loss, const py::handle& sample_weight,
                     bool check_X_finite) {
    Net<T> net = take_network<T>(weights, biases, activation, loss, false);
    if (y.is_none()) throw std::invalid_argument("y: targets are required");
    const l2fast::Dataset<T> data = take_data<T>(net.shape, X, y, net.keep, sample_weight,
                                                 check_X_finite ? XChecks::All : XChecks::Structure);
    l2fast::LossStats stats;
    {
        ReleasedGil release;
        stats = l2fast::evaluate(net.shape, net.params, data);
    }
    return stats_tuple(stats);
}

// The scratch memory of gradients() kept between calls (l2fast.distributed keeps one per network): one per
// dtype, and a flag that refuses a second call while one is using it.
struct GradientsWorkspace {
    std::shared_ptr<l2fast::GradientsScratch<float>> f32 = l2fast::make_gradients_scratch<float>();
    std::shared_ptr<l2fast::GradientsScratch<double>> f64 = l2fast::make_gradients_scratch<double>();
    std::atomic<bool> busy{false};

    template <class T>
    l2fast::GradientsScratch<T>* scratch() {
        if constexpr (std::is_same_v<T, float>) return f32.get();
        else return f64.get();
    }
    std::size_t times_grown() const { return l2fast::times_grown(*f32) + l2fast::times_grown(*f64); }
};

// grads' pointers: into the arrays of out = (dW list, db list) when given (float64, C-contiguous, writable, of
// the layers' shapes, none sharing memory with another or with what the call reads), else into new arrays.
template <class T>
std::pair<py::list, py::list> gradient_arrays(const Net<T>& net, const py::handle& out, const std::vector<py::array>& read,
                                              l2fast::Params<double>& grads) {
    const std::size_t L = net.shape.n_layers();
    py::list dW, db;
    if (!out.is_none()) {
        if (!py::isinstance<py::tuple>(out) || py::len(out) != 2 || !py::isinstance<py::list>(out[py::int_(0)]) ||
            !py::isinstance<py::list>(out[py::int_(1)]))
            throw py::type_error("out: expected a tuple (dW list, db list) of float64 arrays");
        dW = out[py::int_(0)].cast<py::list>();
        db = out[py::int_(1)].cast<py::list>();
        if (dW.size() != L || db.size() != L)
            throw std::invalid_argument("out: expected " + std::to_string(L) + " arrays in each list");
    }
    std::vector<py::array> written;
    for (std::size_t l = 0; l < L; ++l) {
        const py::ssize_t n_out = py::ssize_t(net.shape.sizes[l + 1]), n_in = py::ssize_t(net.shape.sizes[l]);
        const std::string at = "[" + std::to_string(l) + "]";
        py::array w = out.is_none() ? py::array_t<double>({n_out, n_in}) : checked<double>(dW[l], "out dW" + at, {n_out, n_in}, true);
        py::array b = out.is_none() ? py::array_t<double>(n_out) : checked<double>(db[l], "out db" + at, {n_out}, true);
        grads.W.push_back(ptr<double>(w));
        grads.b.push_back(ptr<double>(b));
        if (out.is_none()) {
            dW.append(w);
            db.append(b);
        }
        written.push_back(std::move(w));
        written.push_back(std::move(b));
    }
    if (!out.is_none()) {
        check_disjoint(written, "out");
        check_not_written(read, written, "out: an array shares memory with the weights or data the gradients are "
                                         "computed from");
    }
    return {dW, db};
}

template <class T>
py::tuple gradients_t(const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
                      double lam_over_m, const std::string& activation, const std::string& loss,
                      const py::handle& sample_weight, bool check_X_finite, bool with_correct, const py::handle& out,
                      const py::handle& workspace_obj, const py::handle& on_layer, long long share_threads) {
    const std::size_t threads_for_shares = checked_share_threads(share_threads);
    Net<T> net = take_network<T>(weights, biases, activation, loss, false);
    if (y.is_none()) throw std::invalid_argument("y: targets are required");
    std::vector<py::array> read = net.keep;
    const l2fast::Dataset<T> data = take_data<T>(net.shape, X, y, read, sample_weight,
                                                 check_X_finite ? XChecks::All : XChecks::Structure);
    finite_scalar(lam_over_m, "lam_over_m", false);
    GradientsWorkspace* workspace = nullptr;
    if (!workspace_obj.is_none()) {
        if (!py::isinstance<GradientsWorkspace>(workspace_obj))
            throw py::type_error("workspace: expected a GradientsWorkspace");
        workspace = workspace_obj.cast<GradientsWorkspace*>();
    }
    std::function<void(std::size_t)> layer_done;
    if (!on_layer.is_none()) {
        if (!PyCallable_Check(on_layer.ptr())) throw py::type_error("on_layer: expected a function of a layer number");
        py::object callback = py::reinterpret_borrow<py::object>(on_layer);
        layer_done = [callback](std::size_t l) {  // on this thread, between the layers' products
            py::gil_scoped_acquire gil;
            callback(l);
        };
    }
    l2fast::Params<double> grads;  // summed in double whatever T
    auto [dW, db] = gradient_arrays<T>(net, out, read, grads);
    if (workspace && workspace->busy.exchange(true))
        throw std::invalid_argument("workspace: in use by another call of gradients; each caller needs its own");
    l2fast::LossStats stats;
    try {
        ReleasedGil release;
        stats = l2fast::gradients(net.shape, net.params, data, lam_over_m, grads,
                                  workspace ? workspace->scratch<T>() : nullptr, layer_done, threads_for_shares);
    } catch (...) {
        if (workspace) workspace->busy.store(false);
        throw;
    }
    if (workspace) workspace->busy.store(false);
    if (with_correct) return py::make_tuple(dW, db, stats.loss_sum, stats.correct);
    return py::make_tuple(dW, db, stats.loss_sum);
}

// (dW, db, loss_sum, c, P) of a one-layer network at (W, b): J's gradient (float64) and the loss's curvature there
// (c (m,), P (m, n_out) for softmax, else None), in one read of X (l2fast.solvers.NewtonCG).
template <class T>
py::tuple linear_gradient_curvature_t(const py::handle& W_obj, const py::handle& b_obj, const py::handle& X_obj,
                                      const py::handle& y_obj, double lam_over_m, const std::string& loss,
                                      const py::handle& sample_weight, bool check_X) {
    py::array W = checked<T>(W_obj, "W", {-1, -1});
    const py::ssize_t n_out = W.shape(0), n_in = W.shape(1);
    if (n_out < 1 || n_in < 1) throw std::invalid_argument("W: expected shape (n_out >= 1, n_in >= 1), got " + shape_str(W));
    py::array b = checked<T>(b_obj, "b", {n_out});
    finite_scalar(lam_over_m, "lam_over_m", false);
    l2fast::Shape shape;
    shape.sizes = {std::size_t(n_in), std::size_t(n_out)};
    shape.loss = l2fast::parse_loss(loss);
    l2fast::check_shape(shape);
    std::vector<py::array> keep{W, b};
    const l2fast::Dataset<T> data = take_data<T>(shape, X_obj, y_obj, keep, sample_weight,
                                                 check_X ? XChecks::All : XChecks::None);
    const py::ssize_t m = py::ssize_t(data.m);
    py::array_t<double> dW({n_out, n_in}), db(n_out), c(m);
    py::object P = py::none();
    double* p = nullptr;
    if (shape.loss == Loss::Softmax) {
        py::array_t<double> probabilities({m, n_out});
        p = probabilities.mutable_data();
        P = probabilities;
    }
    double* gw = dW.mutable_data();
    double* gb = db.mutable_data();
    double* cv = c.mutable_data();
    double loss_sum;
    {
        ReleasedGil release;
        loss_sum = l2fast::linear_gradient_curvature(data, shape.loss, std::size_t(n_in), std::size_t(n_out),
                                                     cptr<T>(W), cptr<T>(b), lam_over_m, gw, gb, cv, p);
    }
    return py::make_tuple(dW, db, loss_sum, c, P);
}

// The loss's curvature at a point for newton.hpp's passes: c (m,) and, for softmax, P (m, n_out), else None;
// checked, and kept alive in keep.
l2fast::Curvature take_curvature(const py::handle& c_obj, const py::handle& P_obj, py::ssize_t m, py::ssize_t n_out,
                                 std::vector<py::array>& keep) {
    l2fast::Curvature curvature;
    keep.push_back(checked<double>(c_obj, "c", {m}));
    curvature.c = cptr<double>(keep.back());
    if (!P_obj.is_none()) {
        keep.push_back(checked<double>(P_obj, "P", {m, n_out}));
        curvature.P = cptr<double>(keep.back());
    }
    return curvature;
}

// What a pass at a given curvature reads (newton.hpp): X, whose values are checked with check_X only, for a
// one-layer network of n_in inputs and n_out outputs, and the curvature (c, P) for X's m records.
template <class T>
std::pair<l2fast::Dataset<T>, l2fast::Curvature> take_curvature_pass(const py::handle& X_obj, const py::handle& c_obj,
                                                                     const py::handle& P_obj, py::ssize_t n_in,
                                                                     py::ssize_t n_out, bool check_X,
                                                                     std::vector<py::array>& keep) {
    l2fast::Shape shape;
    shape.sizes = {std::size_t(n_in), std::size_t(n_out)};
    const l2fast::Dataset<T> data = take_data<T>(shape, X_obj, py::none(), keep, py::none(),
                                                 check_X ? XChecks::All : XChecks::None);
    return {data, take_curvature(c_obj, P_obj, py::ssize_t(data.m), n_out, keep)};
}

// HV, Hv_b (float64) of a one-layer network's J in the direction (V, v_b), both float64, at the point whose
// curvature c (m,) and softmax probabilities P (m, n_out, or None) the caller computed (l2fast.solvers.NewtonCG).
template <class T>
py::tuple linear_hessian_product_t(const py::handle& X_obj, const py::handle& V_obj, const py::handle& v_b_obj,
                                   const py::handle& c_obj, const py::handle& P_obj, double lam_over_m, bool check_X) {
    py::array V = checked<double>(V_obj, "V", {-1, -1});
    const py::ssize_t n_out = V.shape(0), n_in = V.shape(1);
    if (n_out < 1 || n_in < 1) throw std::invalid_argument("V: expected shape (n_out >= 1, n_in >= 1), got " + shape_str(V));
    py::array v_b = checked<double>(v_b_obj, "v_b", {n_out});
    finite_scalar(lam_over_m, "lam_over_m", false);
    std::vector<py::array> keep{V, v_b};
    const auto [data, curvature] = take_curvature_pass<T>(X_obj, c_obj, P_obj, n_in, n_out, check_X, keep);
    py::array_t<double> HV({n_out, n_in});
    py::array_t<double> Hv_b(n_out);
    double* hv = HV.mutable_data();
    double* hb = Hv_b.mutable_data();
    {
        ReleasedGil release;
        l2fast::linear_hessian_product(data, std::size_t(n_in), std::size_t(n_out), curvature, cptr<double>(V),
                                       cptr<double>(v_b), lam_over_m, hv, hb);
    }
    return py::make_tuple(HV, Hv_b);
}

// (diag_W, diag_b), float64: m times the diagonal of the data part of a one-layer network's Hessian at the
// curvature (c, P), one read of X; without P one row shared by every output.
template <class T>
py::tuple linear_hessian_diagonal_t(const py::handle& X_obj, const py::handle& c_obj, const py::handle& P_obj,
                                    py::ssize_t n_in, bool check_X) {
    if (n_in < 1) throw std::invalid_argument("n_in: expected >= 1, got " + std::to_string(n_in));
    py::ssize_t outputs = 1;
    if (!P_obj.is_none()) {
        const py::array P = checked<double>(P_obj, "P", {-1, -1});
        outputs = P.shape(1);
        if (outputs < 1) throw std::invalid_argument("P: expected shape (m, n_out >= 1), got " + shape_str(P));
    }
    std::vector<py::array> keep;
    const auto [data, curvature] = take_curvature_pass<T>(X_obj, c_obj, P_obj, n_in, outputs, check_X, keep);
    py::array_t<double> diag_W({outputs, n_in});
    py::array_t<double> diag_b(outputs);
    double* dw = diag_W.mutable_data();
    double* db = diag_b.mutable_data();
    {
        ReleasedGil release;
        l2fast::linear_hessian_diagonal(data, std::size_t(n_in), std::size_t(outputs), curvature, dw, db);
    }
    return py::make_tuple(diag_W, diag_b);
}

// y and x of one dtype and shape, y written in place; partly overlapping buffers are refused.
template <class T>
std::pair<py::array, py::array> same_shape_pair(const py::handle& y_obj, const char* y_name, const py::handle& x_obj,
                                                const char* x_name) {
    py::array y = as_array(y_obj, y_name);
    std::vector<py::ssize_t> shape(y.shape(), y.shape() + y.ndim());
    y = checked<T>(y, y_name, shape, true);
    py::array x = checked<T>(x_obj, x_name, shape);
    const char* y0 = static_cast<const char*>(y.data());
    const char* x0 = static_cast<const char*>(x.data());
    const py::ssize_t bytes = y.nbytes();
    if (y0 != x0 && y0 < x0 + bytes && x0 < y0 + bytes)
        throw std::invalid_argument(std::string(x_name) + ": overlaps " + y_name + " in memory");
    return {y, x};
}

template <class T>
void l2_update_t(const py::handle& W_obj, const py::handle& dW_obj, double lr, double lam_over_m) {
    finite_scalar(lr, "lr", true);
    finite_scalar(lam_over_m, "lam_over_m", false);
    auto [W, dW] = same_shape_pair<T>(W_obj, "W", dW_obj, "dW");
    T* w = ptr<T>(W);
    const T* d = cptr<T>(dW);
    const std::size_t n = std::size_t(W.size());
    ReleasedGil release;
    l2fast::inplace_l2_update(w, d, n, T(lr), T(lam_over_m));
}

template <class T>
void optimizer_step_t(const py::handle& P_obj, const py::handle& G_obj, const py::list& slots, double lr,
                      double decay, long long step, const OptimizerArgs& args) {
    finite_scalar(lr, "lr", true);
    finite_scalar(decay, "decay", false);
    const l2fast::Optimizer opt = args.parse();
    if (step < 1) throw std::invalid_argument("step must be >= 1, got " + std::to_string(step));
    auto [P, G] = same_shape_pair<T>(P_obj, "P", G_obj, "G");
    std::vector<py::ssize_t> shape(P.shape(), P.shape() + P.ndim());
    if (slots.size() != opt.n_slots())
        throw std::invalid_argument("slots: this optimizer keeps " + std::to_string(opt.n_slots()) +
                                    " state arrays, got " + std::to_string(slots.size()));
    std::vector<py::array> written{P};
    T* S[2] = {nullptr, nullptr};
    for (std::size_t s = 0; s < slots.size(); ++s) {
        py::array a = checked<T>(slots[s], "slots[" + std::to_string(s) + "]", shape, true);
        S[s] = ptr<T>(a);
        written.push_back(a);
    }
    check_disjoint(written, "slots");
    for (const py::array& a : written) {
        const char* w0 = static_cast<const char*>(a.data());
        const char* g0 = static_cast<const char*>(G.data());
        if (w0 < g0 + G.nbytes() && g0 < w0 + a.nbytes())
            throw std::invalid_argument("G: overlaps an array written in place");
    }
    T* p = ptr<T>(P);
    const T* g = cptr<T>(G);
    const std::size_t n = std::size_t(P.size());
    ReleasedGil release;
    l2fast::inplace_optimizer_step(opt, step, p, g, S[0], S[1], n, T(lr), T(decay));
}

template <class T>
void axpy_t(double alpha, const py::handle& x_obj, const py::handle& y_obj) {
    if (!std::isfinite(alpha)) throw std::invalid_argument("alpha must be finite");
    auto [y, x] = same_shape_pair<T>(y_obj, "y", x_obj, "x");
    if (y.size() > py::ssize_t(std::numeric_limits<int>::max()))
        throw std::invalid_argument("y: more than 2^31 - 1 entries");
    T* yp = ptr<T>(y);
    const T* xp = cptr<T>(x);
    const int n = int(y.size());
    ReleasedGil release;
    l2fast::blas::axpy(n, T(alpha), xp, yp);
}

template <class T>
double shuffled_read_t(const py::handle& X_obj, int repeats, std::size_t batch) {
    const py::array X = checked<T>(X_obj, "X", {-1, -1});
    if (X.shape(0) == 0 || X.shape(1) == 0) throw std::invalid_argument("X: expected at least one row and column");
    const T* data = cptr<T>(X);
    const std::size_t m = std::size_t(X.shape(0)), n_in = std::size_t(X.shape(1));
    ReleasedGil release;
    return l2fast::shuffled_read_seconds(data, m, n_in, repeats, batch);
}

// Float or double from an array's dtype; anything else is a TypeError naming the argument.
template <class F32, class F64>
auto by_array_dtype(const py::handle& obj, const std::string& name, F32 f32, F64 f64) {
    py::array a = as_array(obj, name);
    if (a.dtype().equal(py::dtype::of<float>())) return f32();
    if (a.dtype().equal(py::dtype::of<double>())) return f64();
    throw py::type_error(name + ": expected dtype float32 or float64, got " + std::string(py::str(a.dtype())));
}

// Picks float or double from weights[0]; every other float array must then match it exactly.
template <class F32, class F64>
auto by_dtype(const py::list& weights, F32 f32, F64 f64) {
    if (weights.size() == 0) throw std::invalid_argument("weights: need at least one layer");
    py::array w = as_array(weights[0], "weights[0]");
    if (w.dtype().equal(py::dtype::of<float>())) return f32();
    if (w.dtype().equal(py::dtype::of<double>())) return f64();
    throw py::type_error("weights[0]: expected dtype float32 or float64, got " + std::string(py::str(w.dtype())));
}

// J and its gradient at a flat parameter vector, for l2fast.solvers' L-BFGS on a one-layer network: X (dense or
// CSR), y and sample_weight are checked once, when it is made (X's values for NaN and infinity unless check_X is
// false), and kept; each evaluate(x, grad) then checks x and grad only and, on dense X, allocates nothing once its
// scratch has grown (l2fast::linear_objective).
class LinearObjective {
public:
    LinearObjective(const py::handle& X, const py::handle& y, long long n_out, const std::string& loss, double lam,
                    const py::handle& sample_weight, bool check_X)
        : lam_(finite_scalar(lam, "lam", false)) {
        const bool sparse = py::isinstance<py::tuple>(X);
        if (sparse && py::len(X) != 4)
            throw py::type_error("X: a sparse X is the tuple (data, indices, indptr, shape)");
        const py::handle values = sparse ? py::handle(X.cast<py::tuple>()[0]) : X;
        py::array a = as_array(values, sparse ? "X.data" : "X");
        double_ = a.dtype().equal(py::dtype::of<double>());
        if (!double_ && !a.dtype().equal(py::dtype::of<float>()))
            throw py::type_error(std::string(sparse ? "X.data" : "X") + ": expected dtype float32 or float64, got " +
                                 std::string(py::str(a.dtype())));
        long long n_in;
        if (sparse) {
            const auto dims = X.cast<py::tuple>()[3].cast<std::vector<long long>>();
            if (dims.size() != 2) throw std::invalid_argument("X: expected a sparse shape (m, n_in)");
            n_in = dims[1];
        } else {
            if (a.ndim() != 2) throw std::invalid_argument("X: expected a 2-D array, got " + shape_str(a));
            n_in = a.shape(1);
        }
        if (n_in < 1) throw std::invalid_argument("X: expected at least one column");
        if (n_out < 1) throw std::invalid_argument("n_out must be >= 1, got " + std::to_string(n_out));
        if (y.is_none()) throw std::invalid_argument("y: targets are required");
        shape_.sizes = {std::size_t(n_in), std::size_t(n_out)};
        shape_.act = l2fast::Activation::Identity;
        shape_.loss = l2fast::parse_loss(loss);
        l2fast::check_shape(shape_);
        const XChecks checks = check_X ? XChecks::All : XChecks::Structure;
        if (double_)
            data64_ = take_data<double>(shape_, X, y, keep_, sample_weight, checks);
        else
            data32_ = take_data<float>(shape_, X, y, keep_, sample_weight, checks);
        m_ = double_ ? data64_.m : data32_.m;
    }

    std::size_t n_params() const { return shape_.n_out() * shape_.n_in() + shape_.n_out(); }

    py::tuple evaluate(const py::handle& x_obj, const py::handle& grad_obj) {
        const py::ssize_t n = py::ssize_t(n_params());
        py::array x = checked<double>(x_obj, "x", {n});
        py::array grad = checked<double>(grad_obj, "grad", {n}, true);
        std::vector<py::array> read = keep_;
        read.push_back(x);
        check_not_written(read, {grad}, "grad: shares memory with x or the data J is computed from");
        const double* at = cptr<double>(x);
        double* into = ptr<double>(grad);
        if (busy_.exchange(true))
            throw std::invalid_argument("LinearObjective: in use by another call of evaluate; each caller needs "
                                        "its own");
        double J = 0.0, loss_sum = 0.0;
        try {
            ReleasedGil release;
            J = double_ ? l2fast::linear_objective(shape_, at, data64_, lam_, into, scratch64_, &loss_sum)
                        : l2fast::linear_objective(shape_, at, data32_, lam_, into, scratch32_, &loss_sum);
        } catch (...) {
            busy_.store(false);
            throw;
        }
        busy_.store(false);
        return py::make_tuple(J, loss_sum);
    }

    std::size_t m() const { return m_; }

private:
    double lam_;
    bool double_ = true;
    std::size_t m_ = 0;
    l2fast::Shape shape_;
    std::vector<py::array> keep_;  // X's arrays, y (labels: a private copy) and sample_weight, as checked
    l2fast::Dataset<float> data32_;
    l2fast::Dataset<double> data64_;
    l2fast::LinearScratch<float> scratch32_;
    l2fast::LinearScratch<double> scratch64_;
    std::atomic<bool> busy_{false};
};

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "l2fast's compiled kernels (private: use l2fast.Network with backend='cpu').";
    m.attr("build_commit") = L2FAST_COMMIT;
    // OpenBLAS's threaded calls run on l2fast's pool from here on, before any BLAS call of this module.
    l2fast::serve_openblas_threads();
    py::module_::import("atexit").attr("register")(py::cpp_function(wait_for_kernels_at_exit));
    // A forked child has only the forking thread, which holds the GIL: no kernel of its is in flight.
    pthread_atfork(nullptr, nullptr, [] { in_flight.store(0); });

    m.def(
        "train_epoch",
        [](const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
           const py::handle& order, long long batch_size, double lr, double lam_over_m,
           const std::string& activation, const std::string& loss, const std::string& optimizer,
           const py::list& slots, long long step, double momentum, bool nesterov, double beta1, double beta2,
           double eps, bool decoupled, bool eps_on_v, const py::handle& sample_weight, bool check_finite,
           bool with_norms, std::optional<double> short_lam_over_m, long long share_threads) {
            const OptimizerArgs args{optimizer, momentum, nesterov, beta1, beta2, eps, decoupled, eps_on_v};
            return by_dtype(
                weights,
                [&] { return train_epoch_t<float>(weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss, args, slots, step, sample_weight, check_finite, with_norms, short_lam_over_m, share_threads); },
                [&] { return train_epoch_t<double>(weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss, args, slots, step, sample_weight, check_finite, with_norms, short_lam_over_m, share_threads); });
        },
        py::arg("weights"), py::arg("biases"), py::arg("X"), py::arg("y"), py::arg("order"), py::arg("batch_size"),
        py::arg("lr"), py::arg("lam_over_m"), py::arg("activation"), py::arg("loss"), py::kw_only(),
        py::arg("optimizer") = "sgd", py::arg("slots") = py::list(), py::arg("step") = 0, py::arg("momentum") = 0.9,
        py::arg("nesterov") = false, py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8,
        py::arg("decoupled") = false, py::arg("eps_on_v") = false, py::arg("sample_weight") = py::none(),
        py::arg("check_finite") = true, py::arg("with_norms") = false, py::arg("short_lam_over_m") = py::none(),
        py::arg("share_threads") = 0,
        "One epoch of minibatch steps in place on weights and biases: the fused L2 step of gradient descent,\n"
        "or another optimizer ('momentum', 'adam') with its state arrays slots (lists of 2L arrays, see\n"
        "l2fast.optim.OptimizerState) after step earlier steps. Returns (loss_sum, correct) over the\n"
        "minibatches, each measured before its own update; with_norms=True appends the sum over the steps of\n"
        "sum_l ||W_l||^2 at the weights each step's loss was computed with. A signal (Ctrl-C) ends the epoch\n"
        "after the step in hand and raises its exception; the parameters are then those after that step.\n"
        "check_finite=False skips the scan of X for NaN and infinity (as in gradients). short_lam_over_m, when\n"
        "given, is the decay of a step on fewer than batch_size records (the last) instead of lam_over_m.\n"
        "share_threads: the threads for steps cut in two shares of records (optimizer_step_shares,\n"
        "sgd_step_shares), at most 2; 0: OpenBLAS's count. Give it with OpenBLAS on one thread for the call\n"
        "(the cpu backend does): each share's products then stay on its thread.");

    m.def(
        "train_epoch_stacked",
        [](const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
           const py::handle& order, long long batch_size, double lr, const std::vector<double>& lam_over_m,
           const std::string& activation, const std::string& loss, const py::handle& sample_weight,
           bool check_finite) {
            if (weights.size() == 0 || !py::isinstance<py::list>(weights[0]))
                throw py::type_error("weights: expected a list with one list of arrays per model");
            return by_dtype(
                weights[0].cast<py::list>(),
                [&] { return train_epoch_stacked_t<float>(weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss, sample_weight, check_finite); },
                [&] { return train_epoch_stacked_t<double>(weights, biases, X, y, order, batch_size, lr, lam_over_m, activation, loss, sample_weight, check_finite); });
        },
        py::arg("weights"), py::arg("biases"), py::arg("X"), py::arg("y"), py::arg("order"), py::arg("batch_size"),
        py::arg("lr"), py::arg("lam_over_m"), py::arg("activation"), py::arg("loss"), py::kw_only(),
        py::arg("sample_weight") = py::none(), py::arg("check_finite") = true,
        "train_epoch for K models of one shape at once (weights[k], biases[k], lam_over_m[k] per model), on one\n"
        "order and one gathered batch. Returns a list of (loss_sum, correct), one per model.");

    m.def(
        "predict",
        [](const py::list& weights, const py::list& biases, const py::handle& X, const std::string& activation,
           const std::string& loss) {
            return by_dtype(
                weights, [&] { return predict_t<float>(weights, biases, X, activation, loss); },
                [&] { return predict_t<double>(weights, biases, X, activation, loss); });
        },
        py::arg("weights"), py::arg("biases"), py::arg("X"), py::arg("activation"), py::arg("loss"),
        "The network's output yhat (m, n_out) for X (m, n_in).");

    m.def(
        "evaluate",
        [](const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
           const std::string& activation, const std::string& loss, const py::handle& sample_weight,
           bool check_finite) {
            return by_dtype(
                weights, [&] { return evaluate_t<float>(weights, biases, X, y, activation, loss, sample_weight, check_finite); },
                [&] { return evaluate_t<double>(weights, biases, X, y, activation, loss, sample_weight, check_finite); });
        },
        py::arg("weights"), py::arg("biases"), py::arg("X"), py::arg("y"), py::arg("activation"), py::arg("loss"),
        py::kw_only(), py::arg("sample_weight") = py::none(), py::arg("check_finite") = true,
        "(loss_sum, correct) over the whole data set; the loss sum weighted by sample_weight when given.");

    m.def(
        "all_finite",
        [](const py::handle& values) {
            py::array a = as_array(values, "values");
            const bool is_double = a.dtype().equal(py::dtype::of<double>());
            if (!is_double && !a.dtype().equal(py::dtype::of<float>()))
                throw py::type_error("values: expected float32 or float64, got " + std::string(py::str(a.dtype())));
            std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
            if (is_double) {
                a = checked<double>(a, "values", shape);
                ReleasedGil release;
                return all_finite(cptr<double>(a), std::size_t(a.size()));
            }
            a = checked<float>(a, "values", shape);
            ReleasedGil release;
            return all_finite(cptr<float>(a), std::size_t(a.size()));
        },
        py::arg("values"),
        "Whether every value of a C-contiguous float32 or float64 array is finite: one vectorised pass shared by\n"
        "l2fast's threads, with no temporary array (NumPy's isfinite(a).all() writes a boolean array first).");

    py::class_<GradientsWorkspace>(m, "GradientsWorkspace",
                                   "Scratch memory that gradients(..., workspace=) keeps between calls, so that calls on\n"
                                   "batches of one network allocate nothing once it has grown to the largest batch\n"
                                   "(networks of more than one layer; one caller at a time).")
        .def(py::init<>())
        .def_property_readonly("times_grown", &GradientsWorkspace::times_grown,
                               "How often it has allocated its buffers: once per network and dtype, again only for a "
                               "larger batch.");

    m.def(
        "gradients",
        [](const py::list& weights, const py::list& biases, const py::handle& X, const py::handle& y,
           double lam_over_m, const std::string& activation, const std::string& loss,
           const py::handle& sample_weight, bool check_finite, bool with_correct, const py::handle& out,
           const py::handle& workspace, const py::handle& on_layer, long long share_threads) {
            return by_dtype(
                weights,
                [&] {
                    return gradients_t<float>(weights, biases, X, y, lam_over_m, activation, loss, sample_weight,
                                              check_finite, with_correct, out, workspace, on_layer, share_threads);
                },
                [&] {
                    return gradients_t<double>(weights, biases, X, y, lam_over_m, activation, loss, sample_weight,
                                               check_finite, with_correct, out, workspace, on_layer, share_threads);
                });
        },
        py::arg("weights"), py::arg("biases"), py::arg("X"), py::arg("y"), py::arg("lam_over_m"),
        py::arg("activation"), py::arg("loss"), py::kw_only(), py::arg("sample_weight") = py::none(),
        py::arg("check_finite") = true, py::arg("with_correct") = false, py::arg("out") = py::none(),
        py::arg("workspace") = py::none(), py::arg("on_layer") = py::none(), py::arg("share_threads") = 0,
        "(dJ/dW list, dJ/db list, loss_sum) over the whole data set: float64 arrays, the products taken in the\n"
        "network's dtype and summed in float64; the loss sum weighted by sample_weight (m,) when given.\n"
        "check_finite=False skips the scan of X for NaN and infinity (never the checks of shapes, dtypes and\n"
        "labels): for a solver's repeated passes over an X it has already checked; a non-finite X then gives a\n"
        "non-finite loss, never a crash. with_correct=True appends the count of records classified right\n"
        "(as evaluate counts them, unweighted; 0 for squared_error), which the same pass has. out=(dW list, db\n"
        "list) of float64 arrays receives the gradients (returned as they are) in place of new arrays;\n"
        "workspace=GradientsWorkspace() keeps the pass's scratch memory between calls. on_layer(l) is called (with\n"
        "the GIL) as soon as layer l's gradient is final, from the last layer down, while the layers below are\n"
        "still to come on dense X; an exception it raises ends the call with it. share_threads >= 1 cuts dense X's\n"
        "records in two halves where gradients_shares(layer_sizes, m) says so, each on its own thread (at most\n"
        "share_threads) with its own sums, added in a fixed order: the same bits on one thread and on two; the\n"
        "caller holds OpenBLAS at one thread for the call (on_layer is then called after both halves).");

    py::class_<LinearObjective>(m, "LinearObjective",
                                "J and its gradient at flat parameter vectors for L-BFGS on a one-layer network\n"
                                "(l2fast.solvers): X, y and sample_weight checked once, here.")
        .def(py::init<const py::handle&, const py::handle&, long long, const std::string&, double, const py::handle&,
                      bool>(),
             py::arg("X"), py::arg("y"), py::arg("n_out"), py::arg("loss"), py::arg("lam"), py::kw_only(),
             py::arg("sample_weight") = py::none(), py::arg("check_X") = true,
             "Keeps X (m, n_in) (dense, or CSR as (data, indices, indptr, shape)), y (int64 labels (m,) for softmax,\n"
             "else (m, n_out) of X's dtype) and sample_weight (m,) or None, checked as gradients checks them\n"
             "(check_X=False: not X's values for NaN and infinity), for a network of n_out outputs, this loss and\n"
             "penalty lam (J's lam, not lam / m). The network's dtype is X's.")
        .def("evaluate", &LinearObjective::evaluate, py::arg("x"), py::arg("grad"),
             "(J, loss_sum) at x = [W.ravel(), b], float64 (n_out * n_in + n_out,), W (n_out, n_in); grad, a\n"
             "float64 array of x's shape, receives dJ/dx in the same layout. J = loss_sum / m + lam / (2m) ||W||^2,\n"
             "its gradient that of gradients() at (W, b) rounded to X's dtype, with lam_over_m = lam / m.")
        .def_property_readonly("n_params", &LinearObjective::n_params, "The length of x and grad.")
        .def_property_readonly("m", &LinearObjective::m, "The number of records.");

    m.def(
        "linear_gradient_curvature",
        [](const py::handle& W, const py::handle& b, const py::handle& X, const py::handle& y, double lam_over_m,
           const std::string& loss, const py::handle& sample_weight, bool check_X) {
            return by_array_dtype(
                W, "W",
                [&] { return linear_gradient_curvature_t<float>(W, b, X, y, lam_over_m, loss, sample_weight, check_X); },
                [&] { return linear_gradient_curvature_t<double>(W, b, X, y, lam_over_m, loss, sample_weight, check_X); });
        },
        py::arg("W"), py::arg("b"), py::arg("X"), py::arg("y"), py::arg("lam_over_m"), py::arg("loss"), py::kw_only(),
        py::arg("sample_weight") = py::none(), py::arg("check_X") = true,
        "(dW, db, loss_sum, c, P) of a one-layer network (W (n_out, n_in), b (n_out,)) over X (dense or CSR) and y:\n"
        "J's gradient (float64) and the loss's curvature at (W, b), c (m,) and for softmax the probabilities P\n"
        "(m, n_out), else None, in one read of X. check_X=False skips the O(nnz) checks of an X checked before.");

    m.def(
        "linear_hessian_product",
        [](const py::handle& X, const py::handle& V, const py::handle& v_b, const py::handle& c, const py::handle& P,
           double lam_over_m, bool check_X) {
            const py::handle values = py::isinstance<py::tuple>(X) ? py::handle(X.cast<py::tuple>()[0]) : X;
            return by_array_dtype(
                values, "X", [&] { return linear_hessian_product_t<float>(X, V, v_b, c, P, lam_over_m, check_X); },
                [&] { return linear_hessian_product_t<double>(X, V, v_b, c, P, lam_over_m, check_X); });
        },
        py::arg("X"), py::arg("V"), py::arg("v_b"), py::arg("c"), py::arg("P"), py::arg("lam_over_m"), py::kw_only(),
        py::arg("check_X") = true,
        "(HV, Hv_b), float64: the Hessian of a one-layer network's J times the direction (V (n_out, n_in), v_b\n"
        "(n_out,)), float64, given the curvature c (m,) and softmax probabilities P (m, n_out) or None at the\n"
        "current point: (1/m) sum_i R_i x_i^T + lam_over_m V and (1/m) sum_i R_i, one read of X (dense or CSR).\n"
        "check_X=False skips the O(nnz) checks of an X checked before (the kernel never reads outside it).");

    m.def(
        "linear_hessian_diagonal",
        [](const py::handle& X, const py::handle& c, const py::handle& P, py::ssize_t n_in, bool check_X) {
            const py::handle values = py::isinstance<py::tuple>(X) ? py::handle(X.cast<py::tuple>()[0]) : X;
            return by_array_dtype(
                values, "X", [&] { return linear_hessian_diagonal_t<float>(X, c, P, n_in, check_X); },
                [&] { return linear_hessian_diagonal_t<double>(X, c, P, n_in, check_X); });
        },
        py::arg("X"), py::arg("c"), py::arg("P"), py::arg("n_in"), py::kw_only(), py::arg("check_X") = true,
        "(diag_W, diag_b), float64: sum_i d_ik x_ij^2 and sum_i d_ik over X (m, n_in), dense or CSR, with\n"
        "d_ik = c_i p_ik (1 - p_ik) given softmax probabilities P (m, n_out), else c_i (one row, shared by every\n"
        "output): m times the diagonal of the data part of a one-layer network's Hessian, one read of X.\n"
        "check_X=False skips the O(nnz) checks of an X checked before (the kernel never reads outside it).");

    m.def(
        "l2_update",
        [](const py::handle& W, const py::handle& dW, double lr, double lam_over_m) {
            by_array_dtype(
                W, "W", [&] { l2_update_t<float>(W, dW, lr, lam_over_m); },
                [&] { l2_update_t<double>(W, dW, lr, lam_over_m); });
        },
        py::arg("W"), py::arg("dW"), py::arg("lr"), py::arg("lam_over_m"),
        "In place: W <- (1 - lr lam_over_m) W - lr dW, one pass over W and dW.");

    m.def(
        "optimizer_step",
        [](const py::handle& P, const py::handle& G, const py::list& slots, double lr, double decay, long long step,
           const std::string& optimizer, double momentum, bool nesterov, double beta1, double beta2, double eps,
           bool decoupled, bool eps_on_v) {
            const OptimizerArgs args{optimizer, momentum, nesterov, beta1, beta2, eps, decoupled, eps_on_v};
            by_array_dtype(
                P, "P", [&] { optimizer_step_t<float>(P, G, slots, lr, decay, step, args); },
                [&] { optimizer_step_t<double>(P, G, slots, lr, decay, step, args); });
        },
        py::arg("P"), py::arg("G"), py::arg("slots"), py::arg("lr"), py::arg("decay"), py::arg("step"), py::kw_only(),
        py::arg("optimizer") = "sgd", py::arg("momentum") = 0.9, py::arg("nesterov") = false, py::arg("beta1") = 0.9,
        py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("decoupled") = false, py::arg("eps_on_v") = false,
        "In place: step number `step` of the optimizer on parameter P from its mean gradient G, with its state\n"
        "arrays slots and decay = lam/m, one fused pass over P, G and the state.");

    m.def(
        "axpy",
        [](double alpha, const py::handle& x, const py::handle& y) {
            by_array_dtype(
                y, "y", [&] { axpy_t<float>(alpha, x, y); }, [&] { axpy_t<double>(alpha, x, y); });
        },
        py::arg("alpha"), py::arg("x"), py::arg("y"),
        "In place: y <- y + alpha x through OpenBLAS (the memory-bandwidth yardstick).");

    m.def(
        "gemm_only_epoch_seconds",
        [](const std::vector<std::size_t>& layer_sizes, std::size_t m, std::size_t batch_size, const std::string& dtype) {
            l2fast::Shape shape;
            shape.sizes = layer_sizes;
            shape.loss = Loss::SquaredError;
            l2fast::check_shape(shape);
            if (m == 0) throw std::invalid_argument("m must be >= 1");
            if (batch_size == 0) throw std::invalid_argument("batch_size must be >= 1");
            for (std::size_t size : layer_sizes)
                if (size > std::size_t(std::numeric_limits<int>::max()))
                    throw std::invalid_argument("layer_sizes: a layer of more than 2^31 - 1 units is beyond BLAS's int sizes");
            if (std::min(batch_size, m) > std::size_t(std::numeric_limits<int>::max()))
                throw std::invalid_argument("batch_size: more than 2^31 - 1 records in one batch is beyond BLAS's int sizes");
            const bool single = is_float32(dtype);
            ReleasedGil release;
            return single ? l2fast::gemm_only_epoch_seconds<float>(shape, m, batch_size)
                          : l2fast::gemm_only_epoch_seconds<double>(shape, m, batch_size);
        },
        py::arg("layer_sizes"), py::arg("m"), py::arg("batch_size"), py::arg("dtype"),
        "Seconds for the GEMMs alone of one training epoch at these shapes, through l2fast's BLAS.");

    m.def(
        "linear_step_fits",
        [](const std::vector<std::size_t>& layer_sizes) {
            l2fast::Shape shape;
            shape.sizes = checked_layer_sizes(layer_sizes);
            return l2fast::linear_step_fits(shape);
        },
        py::arg("layer_sizes"),
        "Whether a plain-SGD epoch of this network on dense X takes the one-layer step of cpp/linear_step.cpp.");

    m.def(
        "optimizer_step_shares",
        [](const std::vector<std::size_t>& layer_sizes, std::size_t batch_size) {
            const std::vector<std::size_t>& sizes = checked_layer_sizes(layer_sizes);
            return l2fast::optimizer_step_shares(sizes, checked_batch_size(batch_size));
        },
        py::arg("layer_sizes"), py::arg("batch_size"),
        "Whether an epoch with an optimizer (momentum, Adam) on dense X cuts its steps in two shares whose sums are "
        "added in a fixed order: its bits then do not depend on the thread count.");

    m.def(
        "sgd_step_shares",
        [](const std::vector<std::size_t>& layer_sizes, std::size_t batch_size, const std::string& dtype) {
            const std::vector<std::size_t>& sizes = checked_layer_sizes(layer_sizes);
            return l2fast::sgd_step_shares(sizes, checked_batch_size(batch_size), is_float32(dtype));
        },
        py::arg("layer_sizes"), py::arg("batch_size"), py::arg("dtype"),
        "Whether a plain-SGD epoch on dense X cuts its steps in the two shares of optimizer_step_shares (float64 "
        "networks that are not linear models): its bits then do not depend on the thread count.");

    m.def(
        "split_step_fits",
        [](const std::vector<std::size_t>& layer_sizes, std::size_t batch_size, const std::string& activation) {
            const std::vector<std::size_t>& sizes = checked_layer_sizes(layer_sizes);
            const std::size_t batch = checked_batch_size(batch_size);  // before the activation's check, as the others
            return l2fast::split_step_fits(sizes, batch, l2fast::parse_activation(activation));
        },
        py::arg("layer_sizes"), py::arg("batch_size"), py::arg("activation"),
        "Whether an epoch on dense X (plain SGD or an optimizer, where optimizer_step_shares or sgd_step_shares\n"
        "is false), given share_threads with OpenBLAS on one thread, cuts its steps in two parts by the hidden\n"
        "layer's units (one hidden layer, ReLU or identity, wide enough): its bits then do not depend on the\n"
        "thread count.");

    m.def(
        "partial_output_fits",
        [](const std::vector<std::size_t>& layer_sizes, std::size_t batch_size) {
            const std::vector<std::size_t>& sizes = checked_layer_sizes(layer_sizes);
            return l2fast::partial_output_fits(sizes, checked_batch_size(batch_size));
        },
        py::arg("layer_sizes"), py::arg("batch_size"),
        "Whether an epoch whose steps optimizer_step_shares (sgd_step_shares) would cut in two shares of records,\n"
        "given share_threads with OpenBLAS on one thread, cuts them by the hidden layer's units instead, each part\n"
        "with its partial of the output layer (one hidden layer of 32 units or more on at most 128 inputs): its bits\n"
        "do not depend on the thread count either.");

    m.def(
        "gradients_shares",
        [](const std::vector<std::size_t>& layer_sizes, long long m) {
            const std::vector<std::size_t>& sizes = checked_layer_sizes(layer_sizes);
            if (m < 1) throw std::invalid_argument("m must be >= 1, got " + std::to_string(m));
            return l2fast::gradients_shares(sizes, std::size_t(m));
        },
        py::arg("layer_sizes"), py::arg("m"),
        "Whether gradients(..., share_threads=n) cuts dense X's m records in two halves, one per thread (the\n"
        "bound of optimizer_step_shares on a half's blocks).");

    m.def(
        "shuffled_read_seconds",
        [](const py::handle& X_obj, int repeats, long long batch_size) {
            if (repeats < 1) throw std::invalid_argument("repeats must be >= 1, got " + std::to_string(repeats));
            if (batch_size < 0)
                throw std::invalid_argument("batch_size must be >= 0, got " + std::to_string(batch_size));
            const std::size_t batch = std::size_t(batch_size);
            return by_array_dtype(
                X_obj, "X", [&] { return shuffled_read_t<float>(X_obj, repeats, batch); },
                [&] { return shuffled_read_t<double>(X_obj, repeats, batch); });
        },
        py::arg("X"), py::arg("repeats") = 5, py::arg("batch_size") = 0,
        "Seconds to read every row of X (m x n_in, float32 or float64, C order) once in a shuffled order, the best of "
        "`repeats` orders: the memory traffic an epoch of a linear model on X cannot avoid. With batch_size > 0, "
        "each batch's rows are gathered once into a buffer and the buffer then read twice (issue 19's floor).");

    m.def(
        "epoch_order",
        [](const py::handle& raw_obj, py::ssize_t m) -> py::object {
            if (m < 0) throw std::invalid_argument("m must be >= 0, got " + std::to_string(m));
            const py::array raw = checked<std::uint64_t>(raw_obj, "raw", {-1});
            py::array_t<std::int64_t> order = Int64Buffers::array(std::size_t(m));
            const std::uint64_t* words = cptr<std::uint64_t>(raw);
            std::int64_t* out = order.mutable_data();
            const std::size_t n_raw = std::size_t(raw.size());
            std::ptrdiff_t used;
            {
                ReleasedGil release;  // any words give an order: j = (word * (i + 1)) >> 64 is within [0, i]
                used = l2fast::shuffled_order(words, n_raw, out, std::size_t(m));
            }
            if (used < 0) return py::none();
            return py::make_tuple(order, used);
        },
        py::arg("raw"), py::arg("m"),
        "A uniformly random permutation of range(m) (int64) drawn by Fisher-Yates from raw 64-bit words (uint64, 1-D, "
        "e.g. BitGenerator.random_raw), one word per position from the last down, j by Lemire's multiply-and-shift "
        "with its exact rejection taking spare words from the end: (order, words used), or None when a rejection "
        "found no spare word (draw more and call again). See cpp/shuffle.hpp.");

    m.def(
        "epoch_order_drawn",
        [](const py::handle& capsule, py::ssize_t m, py::ssize_t spare_words) -> py::object {
            if (m < 0 || spare_words < 0) throw std::invalid_argument("m and spare_words must be >= 0");
            // NumPy's bitgen_t (numpy/random/bitgen.h), which a BitGenerator's capsule holds
            struct BitGen {
                void* state;
                std::uint64_t (*next_uint64)(void*);
                std::uint32_t (*next_uint32)(void*);
                double (*next_double)(void*);
                std::uint64_t (*next_raw)(void*);
            };
            auto* bitgen = static_cast<BitGen*>(PyCapsule_GetPointer(capsule.ptr(), "BitGenerator"));
            if (bitgen == nullptr) throw py::error_already_set();
            py::array_t<std::int64_t> order = Int64Buffers::array(std::size_t(m));
            std::int64_t* out = order.mutable_data();
            bool drawn;
            {
                ReleasedGil release;  // the caller holds the bit generator's lock
                drawn = l2fast::shuffled_order_drawn(bitgen->next_raw, bitgen->state, out, std::size_t(m),
                                                     std::size_t(spare_words));
            }
            if (!drawn) return py::none();
            return std::move(order);
        },
        py::arg("capsule"), py::arg("m"), py::arg("spare_words"),
        "epoch_order's permutation with the words drawn as it goes from a BitGenerator's capsule (its raw words), then "
        "spare_words more drawn and dropped: the order and state epoch_order(random_raw(m - 1 + spare_words), m) "
        "gives. None when m <= 1 or a word was rejected, having drawn some words (restore the state). The caller holds "
        "the bit generator's lock. See cpp/shuffle.hpp.");

    m.def("blas_config", [] { return std::string(l2fast::blas::config()); }, "OpenBLAS's build description.");
    m.def("get_num_threads", &l2fast::blas::num_threads, "Threads OpenBLAS uses for l2fast's GEMMs.");
    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) throw std::invalid_argument("n must be >= 1, got " + std::to_string(n));
            l2fast::blas::set_num_threads(n);
        },
        py::arg("n"), "Sets the threads OpenBLAS uses for l2fast's GEMMs.");
}
