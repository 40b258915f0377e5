/* version.h: the one place the release number is kept.
 * Bumped by hand at release time. */
#ifndef VERSION_H
#define VERSION_H
#define POP3PROXYD_VERSION "0.1.0"
#endif
