/* quarantine.c: the bridges keep rejected messages exactly as the reference
 * filter does (temp file, fsync, rename, directory fsync): its code, shared. */
#include "../pop3filter-ref/quarantine.c"
