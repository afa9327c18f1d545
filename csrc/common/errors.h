// Error helpers shared by every native op. Input errors throw std::invalid_argument, which
// pybind11 turns into ValueError; runtime failures throw std::runtime_error (RuntimeError).
// Nothing here aborts the process.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace unseg {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace unseg

#define UNSEG_CHECK_ARG(cond, ...)                                          \
  do {                                                                      \
    if (!(cond)) throw std::invalid_argument(::unseg::concat(__VA_ARGS__)); \
  } while (0)
