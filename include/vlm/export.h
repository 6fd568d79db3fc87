// Symbol visibility for the public API. Everything is built with -fvisibility=hidden; VLM_API marks what
// libvlm exports to plugins, the daemon and clients.
#ifndef VLM_EXPORT_H
#define VLM_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#    define VLM_API __attribute__((visibility("default")))
#else
#    define VLM_API
#endif

#endif // VLM_EXPORT_H
