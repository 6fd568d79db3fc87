# Service integration and packaging: libsystemd for vlmd (sd_notify, sd_listen_fds), the systemd units,
# sysusers.d/tmpfiles.d snippets, the configuration, man pages, and a Debian package:
#
#   cmake -S . -B build-deb -DCMAKE_INSTALL_PREFIX=/usr -DVLM_BUILD_TESTS=OFF
#   cmake --build build-deb -j2 && (cd build-deb && cpack -G DEB)      # -> build-deb/vlmd_0.1.0_amd64.deb
#
# The prefix matters: the plugin directory, the units' ExecStart= and the pkg-config file are built from it.
# Include this file from the top-level CMakeLists.txt (anywhere after project()); its work runs at the end of
# the top directory, once every target exists.
include_guard(GLOBAL)

function(vlm_packaging)
    include(GNUInstallDirs)
    find_package(PkgConfig REQUIRED)

    # ---- libsystemd (optional: daemon/sd.c speaks the protocol itself without it) ----------------------------
    pkg_check_modules(VLM_LIBSYSTEMD IMPORTED_TARGET GLOBAL libsystemd)
    if (VLM_LIBSYSTEMD_FOUND AND TARGET vlmd)
        target_link_libraries(vlmd PRIVATE PkgConfig::VLM_LIBSYSTEMD)
        target_compile_definitions(vlmd PRIVATE VLMD_HAVE_LIBSYSTEMD=1)
    endif ()

    # Installed into the default library directory, the programs need no RPATH (lintian: custom-library-search-
    # path); elsewhere (/usr/local, /opt) they keep the one the targets set.
    if (CMAKE_INSTALL_PREFIX STREQUAL "/usr")
        foreach (t vlmd vlmctl vlmclient vlm-run)
            if (TARGET ${t})
                set_target_properties(${t} PROPERTIES INSTALL_RPATH "")
            endif ()
        endforeach ()
    endif ()

    # ---- where things go ------------------------------------------------------------------------------------
    # Debian 12 wants units in /lib/systemd/system (what systemd.pc says); other prefixes keep them inside.
    if (CMAKE_INSTALL_PREFIX STREQUAL "/usr")
        pkg_get_variable(unit_dir systemd systemdsystemunitdir)
    endif ()
    if (NOT unit_dir)
        set(unit_dir "lib/systemd/system")
    endif ()
    set(VLMD_SYSTEMD_UNIT_DIR "${unit_dir}" CACHE STRING "Where vlmd.service and vlmd.socket are installed")
    set(VLMD_SYSUSERS_DIR "lib/sysusers.d" CACHE STRING "Where the sysusers.d snippet is installed")
    set(VLMD_TMPFILES_DIR "lib/tmpfiles.d" CACHE STRING "Where the tmpfiles.d snippet is installed")

    # ---- units, snippets, configuration ---------------------------------------------------------------------
    # ExecStart= names the installed daemon: rewrite /usr/bin/vlmd for another prefix.
    set(src ${CMAKE_SOURCE_DIR}/systemd)
    set(gen ${CMAKE_BINARY_DIR}/systemd)
    file(READ ${src}/vlmd.service service)
    string(REPLACE "/usr/bin/vlmd " "${CMAKE_INSTALL_FULL_BINDIR}/vlmd " service "${service}")
    string(REPLACE "/etc/vlmd/" "${CMAKE_INSTALL_FULL_SYSCONFDIR}/vlmd/" service "${service}")
    file(GENERATE OUTPUT ${gen}/vlmd.service CONTENT "${service}")
    set_property(DIRECTORY ${CMAKE_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${src}/vlmd.service)

    install(FILES ${gen}/vlmd.service ${src}/vlmd.socket DESTINATION ${VLMD_SYSTEMD_UNIT_DIR})
    install(FILES ${src}/vlmd.sysusers DESTINATION ${VLMD_SYSUSERS_DIR} RENAME vlmd.conf)
    install(FILES ${src}/vlmd.tmpfiles DESTINATION ${VLMD_TMPFILES_DIR} RENAME vlmd.conf)
    install(FILES ${src}/vlmd.conf DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/vlmd)
    install(FILES ${CMAKE_SOURCE_DIR}/docs/vlmd.conf.example DESTINATION ${CMAKE_INSTALL_DOCDIR})

    # ---- man pages, compressed as Debian wants them ---------------------------------------------------------
    set(man_out "")
    foreach (page vlmd.8 vlmctl.1 vlmd.conf.5)
        string(REGEX MATCH "[0-9]$" section ${page})
        set(out ${CMAKE_BINARY_DIR}/man/${page}.gz)
        add_custom_command(OUTPUT ${out}
                           COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/man
                           COMMAND gzip -9 -n -c ${CMAKE_SOURCE_DIR}/docs/man/${page} > ${out}
                           DEPENDS ${CMAKE_SOURCE_DIR}/docs/man/${page} VERBATIM)
        list(APPEND man_out ${out})
        install(FILES ${out} DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
    endforeach ()
    add_custom_target(vlmd-man ALL DEPENDS ${man_out})

    # ---- Debian package ---------------------------------------------------------------------------------------
    set(deb ${CMAKE_SOURCE_DIR}/cmake/debian)
    set(VLMD_DEB_MAINTAINER "vlmd maintainers <maintainers@vlmd.example.org>" CACHE STRING
        "Maintainer field of the .deb (and its changelog)")
    string(TIMESTAMP now "%a, %d %b %Y %H:%M:%S +0000" UTC)
    file(WRITE ${CMAKE_BINARY_DIR}/debian/changelog.Debian
         "vlmd (${PROJECT_VERSION}-1) unstable; urgency=medium\n\n"
         "  * Package built from the vlmd source tree with CPack.\n\n"
         " -- ${VLMD_DEB_MAINTAINER}  ${now}\n")
    add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/debian/changelog.Debian.gz
                       COMMAND gzip -9 -n -f -k ${CMAKE_BINARY_DIR}/debian/changelog.Debian
                       DEPENDS ${CMAKE_BINARY_DIR}/debian/changelog.Debian VERBATIM)
    add_custom_target(vlmd-deb-changelog ALL DEPENDS ${CMAKE_BINARY_DIR}/debian/changelog.Debian.gz)
    install(FILES ${CMAKE_BINARY_DIR}/debian/changelog.Debian.gz ${deb}/copyright DESTINATION ${CMAKE_INSTALL_DOCDIR})

    set(CPACK_GENERATOR DEB)
    set(CPACK_PACKAGE_NAME vlmd)
    set(CPACK_PACKAGE_VENDOR "vlmd")
    set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
    set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "local vision-language model daemon")
    set(CPACK_PACKAGE_CONTACT "${VLMD_DEB_MAINTAINER}")
    set(CPACK_DEBIAN_PACKAGE_MAINTAINER "${VLMD_DEB_MAINTAINER}")
    # A Debian revision: the package is not a native one (its changelog is changelog.Debian.gz).
    set(CPACK_DEBIAN_PACKAGE_RELEASE 1)
    # The extended description (the synopsis is the summary above); one string: set() with several would join
    # them with ";". Lines stay under 80 columns.
    string(CONCAT CPACK_DEBIAN_PACKAGE_DESCRIPTION
           "vlmd runs vision-language models (LLaVA: image encoder, projector and\n"
           "Llama LLM from GGUF files) on the CPU and answers local clients over a\n"
           "Unix socket, started by systemd socket activation.\n"
           "This package holds the daemon, its plugins, the vlmctl command, the\n"
           "libvlmclient C library with its header and pkg-config file, the systemd\n"
           "units and the man pages.")
    set(CPACK_DEBIAN_PACKAGE_SECTION misc)
    set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
    set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
    set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
    # libvlm and libvlmclient are in this package: dpkg-shlibdeps finds them in the build tree.
    set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${CMAKE_BINARY_DIR}/lib)
    set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
    set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
    # Started units need systemd-sysusers/tmpfiles in postinst; without systemd it falls back to adduser.
    set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "systemd")
    set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${deb}/postinst ${deb}/prerm ${deb}/postrm ${deb}/conffiles
        ${deb}/triggers)
    set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
    set(CPACK_STRIP_FILES ON)
    set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
    include(CPack)
endfunction()

cmake_language(DEFER DIRECTORY ${CMAKE_SOURCE_DIR} CALL vlm_packaging)
